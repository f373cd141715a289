"""Progress lines a person can follow in a long run's console, at most one every ``every_s`` seconds:

    [train joint] step 120/285 | ir | loss 1.234 | 2.9 s/step | 8 min left     (rank 0, training)
    [eval base] scifact-test: 2048/5183 texts | 21.4 texts/s | 2 min left      (an encode)

Training: seconds per step are averaged since the previous line; the time left assumes the rest of
the run steps at the mean rate since the start (IR and STS steps interleave, so that mean is the
fair one). Encoding: the rate and the time left are those of the texts encoded so far.
"""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """``45 s``, ``8 min``, ``1 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressLine:
    """Decides when to print a training progress line and writes it (``update`` returns it, or
    None)."""

    def __init__(
        self, mode: str, total_steps: int, start_step: int = 0, every_s: float = 30.0, clock=None
    ) -> None:
        self.mode, self.total, self.every_s = mode, total_steps, every_s
        self.clock = clock or time.monotonic
        self.started = self.last = self.clock()
        self.first_step = self.last_step = start_step

    def update(self, step: int, task: str, loss: float) -> str | None:
        """After ``step`` (1-based, finished): the line when ``every_s`` passed or the run ended."""
        now = self.clock()
        if now - self.last < self.every_s and step < self.total:
            return None
        per_step = (now - self.last) / max(1, step - self.last_step)
        mean = (now - self.started) / max(1, step - self.first_step)
        left = mean * (self.total - step)
        self.last, self.last_step = now, step
        return (
            f"[train {self.mode}] step {step}/{self.total} | {task} | loss {loss:.3f} | "
            f"{per_step:.1f} s/step | {format_duration(left)} left"
        )


class EncodeProgress:
    """The progress of one encode: ``update(done, total)`` after each batch prints a line every
    ``every_s`` seconds; ``finish(total)`` prints the closing one (texts, seconds, texts/s)."""

    def __init__(self, label: str, every_s: float = 30.0, clock=None, echo=print) -> None:
        self.label, self.every_s, self.echo = label, every_s, echo
        self.clock = clock or time.monotonic
        self.started = self.last = self.clock()

    def update(self, done: int, total: int) -> None:
        """Called with the texts encoded so far and the texts of this encode."""
        now = self.clock()
        if now - self.last < self.every_s or done >= total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        left = (total - done) / max(rate, 1e-9)
        self.echo(
            f"{self.label}: {done}/{total} texts | {rate:.1f} texts/s | "
            f"{format_duration(left)} left",
            flush=True,
        )

    def finish(self, texts: int) -> None:
        """The closing line: ``texts`` encoded in all, how long it took and the rate."""
        seconds = self.clock() - self.started
        rate = f" ({texts / seconds:.1f} texts/s)" if texts and seconds > 0 else ""
        self.echo(f"{self.label}: {texts} texts encoded in {seconds:.1f} s{rate}", flush=True)
