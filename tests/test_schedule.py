"""The task schedule of the dynamic sampler: counts per mode, determinism, resume (no Ray)."""

from __future__ import annotations

import pytest

from pipeline.data.schedule import MIXED, MODES, TaskSchedule, schedule_for_run, task_batches

BATCHES = {"ir": 15, "sts": 18}


def test_proportional_uses_every_batch_once():
    schedule = TaskSchedule(BATCHES, mode="proportional", seed=49)
    assert schedule.counts() == BATCHES
    assert len(schedule) == 33


@pytest.mark.parametrize(
    ("ratio", "batches"),
    [(0.25, BATCHES), (0.25, {"ir": 40, "sts": 7}), (0.7, {"ir": 13, "sts": 90})],
)
def test_ratio_gives_the_ir_fraction_within_one_step(ratio, batches):
    for epoch in range(3):
        schedule = TaskSchedule(batches, mode="ratio", seed=49, epoch=epoch, ir_ratio=ratio)
        counts = schedule.counts()
        assert abs(counts["ir"] - ratio * len(schedule)) <= 1
        assert counts["ir"] <= batches["ir"] and counts["sts"] <= batches["sts"]
        # the longest such epoch: one more step would need a batch one task does not have
        longer = len(schedule) + 1
        ir_steps = int(ratio * longer + 0.5)
        assert ir_steps > batches["ir"] or longer - ir_steps > batches["sts"]


def test_round_robin_alternates_until_a_task_runs_out():
    assert "".join(t[0] for t in TaskSchedule({"ir": 5, "sts": 3}, mode="round_robin")) == "isisisi"
    assert "".join(t[0] for t in TaskSchedule({"ir": 2, "sts": 4}, mode="round_robin")) == "isis"


def test_temperature_follows_size_power_alpha():
    batches = {"ir": 1000, "sts": 4000}
    steps = {"ir": 0, "sts": 0}
    for epoch in range(20):
        for task, n in (
            TaskSchedule(batches, mode="temperature", seed=1, epoch=epoch).counts().items()
        ):
            steps[task] += n
    expected = 1000**0.5 / (1000**0.5 + 4000**0.5)  # alpha 0.5: 1/3 IR
    assert steps["ir"] / (steps["ir"] + steps["sts"]) == pytest.approx(expected, abs=0.02)
    uniform = TaskSchedule(batches, mode="temperature", seed=1, alpha=0.0).counts()
    assert uniform["ir"] == 1000 or uniform["sts"] == 4000  # ends when a task runs out


def test_mixed_and_single_task_schedules():
    assert list(TaskSchedule(BATCHES, mode=MIXED)) == [MIXED] * 15
    for mode in MODES[:-1]:
        assert list(TaskSchedule({"sts": 4}, mode=mode, ir_ratio=0.25)) == ["sts"] * 4


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_and_reshuffled_per_epoch(mode):
    a = TaskSchedule(BATCHES, mode=mode, seed=7, ir_ratio=0.25)
    assert list(a) == list(TaskSchedule(BATCHES, mode=mode, seed=7, ir_ratio=0.25))
    if mode in ("proportional", "ratio", "temperature"):
        assert list(a) != list(a.for_epoch(1))
        assert list(a) != list(TaskSchedule(BATCHES, mode=mode, seed=8, ir_ratio=0.25))


@pytest.mark.parametrize("mode", MODES)
def test_resume_from_a_global_step_continues_identically(mode):
    base = TaskSchedule(BATCHES, mode=mode, seed=3, ir_ratio=0.25)
    uninterrupted = [item for e in range(3) for item in base.for_epoch(e).steps_from(0)]
    assert [s for s, _ in uninterrupted] == list(range(len(uninterrupted)))
    for k in (0, 5, len(base), len(base) + 9, len(uninterrupted) - 1):
        epoch, offset = base.locate(k)
        resumed = [item for e in range(epoch, 3) for item in base.for_epoch(e).steps_from(k)]
        assert resumed == uninterrupted[k:]
        done = base.for_epoch(epoch).consumed_before(k)
        labels = [t for s, t in uninterrupted[k - offset : k]]
        if mode == MIXED:
            assert done == {"ir": offset, "sts": offset}
        else:
            assert done == {t: labels.count(t) for t in BATCHES}


def test_train_modes_pick_the_tasks():
    assert schedule_for_run("ir_only", "ratio", BATCHES, seed=1).counts() == {"ir": 15}
    assert schedule_for_run("sts_only", "proportional", BATCHES, seed=1).counts() == {"sts": 18}
    assert schedule_for_run("mixed", "ratio", BATCHES, seed=1).counts() == {MIXED: 15}
    joint = schedule_for_run("joint", "ratio", BATCHES, seed=1, ir_ratio=0.25)
    assert joint == TaskSchedule(BATCHES, mode="ratio", seed=1, ir_ratio=0.25)


def test_bad_settings_fail_with_a_message():
    with pytest.raises(ValueError, match="sampler mode"):
        TaskSchedule(BATCHES, mode="uniform")
    with pytest.raises(ValueError, match="tasks must be"):
        TaskSchedule({"qa": 3})
    with pytest.raises(ValueError, match="needs both tasks"):
        TaskSchedule({"ir": 3}, mode=MIXED)


SOURCES = {"ir": {"ir:scifact": 9, "ir:snli": 5, "ir:trecqa": 1}}  # sums to BATCHES["ir"]


@pytest.mark.parametrize("mode", MODES)
def test_one_source_per_batch_uses_each_sources_batches_once(mode):
    schedule = TaskSchedule(BATCHES, mode=mode, seed=5, ir_ratio=0.25, source_batches=SOURCES)
    assert list(schedule) == list(TaskSchedule(BATCHES, mode=mode, seed=5, ir_ratio=0.25))
    assert schedule.streams() == ("ir:scifact", "ir:snli", "ir:trecqa", "sts")
    order = schedule.sources("ir")
    assert sorted(order) == sorted(k for k, n in SOURCES["ir"].items() for _ in range(n))
    assert order != tuple(sorted(order))  # permuted, not source by source
    assert order != schedule.for_epoch(1).sources("ir")  # and again every epoch
    assert order == TaskSchedule(BATCHES, seed=5, source_batches=SOURCES).sources("ir")
    assert schedule.sources("sts") == ("sts",) * BATCHES["sts"]


def test_streams_consumed_before_counts_each_sources_batches():
    base = TaskSchedule(BATCHES, seed=11, source_batches=SOURCES)
    epoch = base.for_epoch(1)
    for k in (0, 4, len(base) + 7, len(base) + len(epoch)):
        done = epoch.consumed_before(k)
        used = epoch.streams_consumed_before(k)
        irs = epoch.sources("ir")[: done["ir"]]
        assert used == {
            "ir:scifact": irs.count("ir:scifact"),
            "ir:snli": irs.count("ir:snli"),
            "ir:trecqa": irs.count("ir:trecqa"),
            "sts": done["sts"],
        }
    assert sum(epoch.streams_consumed_before(len(base) + len(epoch)).values()) == 33


def test_source_batches_must_add_up_to_the_tasks_batches():
    with pytest.raises(ValueError, match=r"must sum to num_batches of that task \(15\)"):
        TaskSchedule(BATCHES, source_batches={"ir": {"ir:scifact": 9}})
    with pytest.raises(ValueError, match="must start with sts:"):
        TaskSchedule(BATCHES, source_batches={"sts": {"ir:stsb": 18}})
    only_ir = schedule_for_run("ir_only", "proportional", BATCHES, seed=1, source_batches=SOURCES)
    assert only_ir.streams() == ("ir:scifact", "ir:snli", "ir:trecqa")
    sts_only = schedule_for_run("sts_only", "proportional", BATCHES, seed=1, source_batches=SOURCES)
    assert sts_only.streams() == ("sts",)


def test_task_batches_sums_a_tasks_source_streams():
    streams = {"ir:scifact": 9, "ir:snli": 5, "ir:trecqa": 1, "sts": 18}
    assert task_batches(streams) == (BATCHES, SOURCES)
    assert task_batches(BATCHES) == (BATCHES, {})
