"""The training progress line a person can follow: printed by rank 0 every ``every_s`` seconds (and at
the last step), e.g.

    [train joint] step 120/285 | ir | loss 1.234 | 2.9 s/step | 8 min left

Seconds per step are averaged since the previous line; the time left assumes the rest of the run
steps at the mean rate since the start (IR and STS steps interleave, so that mean is the fair one).
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
    """Decides when to print a progress line and writes it (``update`` returns it, or None)."""

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
