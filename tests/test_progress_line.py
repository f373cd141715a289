"""The training progress line: when it prints and what it says (a fake clock, no Ray)."""

from __future__ import annotations

from pipeline.progress import EncodeProgress, ProgressLine, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_thirty_seconds_and_at_the_last_step():
    clock = FakeClock()
    progress = ProgressLine("joint", total_steps=100, every_s=30, clock=clock)
    lines = []
    for step in range(1, 101):
        clock.now += 2.0  # 2 s per step
        lines.append(progress.update(step, "ir" if step % 3 else "sts", loss=1.5))
    printed = [line for line in lines if line]
    assert len(printed) == 7  # at 30, 60, ..., 180 s (steps 15, 30, ..., 90) and step 100
    assert (
        printed[0] == "[train joint] step 15/100 | sts | loss 1.500 | 2.0 s/step | 3 min left"
    )  # 85 x 2 s
    assert printed[-1].startswith("[train joint] step 100/100") and printed[-1].endswith("0 s left")


def test_a_resumed_run_estimates_from_its_own_steps():
    clock = FakeClock()
    progress = ProgressLine("ir_only", total_steps=50, start_step=40, every_s=30, clock=clock)
    clock.now = 40.0
    assert progress.update(44, "ir", loss=0.25).endswith("10.0 s/step | 60 s left")


def test_durations_read_as_a_person_says_them():
    assert format_duration(45) == "45 s"
    assert format_duration(8 * 60 + 10) == "8 min"
    assert format_duration(65 * 60) == "1 h 05 min"


def test_an_encode_prints_its_rate_and_time_left_then_a_closing_line():
    clock, lines = FakeClock(), []
    progress = EncodeProgress(
        "[eval] scifact-test", every_s=30, clock=clock, echo=lambda s, **_: lines.append(s)
    )
    for done in [*range(64, 5183, 64), 5183]:  # 81 batches of up to 64 texts, 2 s each
        clock.now += 2.0
        progress.update(done, 5183)
    progress.finish(5183)
    assert lines[0] == "[eval] scifact-test: 960/5183 texts | 32.0 texts/s | 2 min left"
    assert len(lines) == 5 + 1  # at 30, 60, ..., 150 s, then the closing line
    assert lines[-1] == "[eval] scifact-test: 5183 texts encoded in 162.0 s (32.0 texts/s)"
