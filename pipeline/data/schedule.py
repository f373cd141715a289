"""The task schedule of the dynamic sampler: which task every optimizer step of an epoch belongs to.

A :class:`TaskSchedule` is a pure function of (number of global batches per task, mode, seed, epoch,
``ir_ratio``, ``alpha``): every worker computes the same one, and a resumed run recomputes it. Steps
are indexed globally across epochs (``first_step`` is the global index of the epoch's step 0), so a
run restarts from one integer, the global step.

Modes (tasks in the order of :data:`TASK_ORDER`):

- ``proportional`` (the paper): the global batches of all tasks pooled and permuted with one seed;
  every global batch is used once per epoch.
- ``ratio``: a fraction ``ir_ratio`` of the steps are IR steps. The epoch is the longest one the data
  allow at that ratio: ``T`` steps with ``round(ir_ratio * T)`` IR steps, ``T`` the largest value for
  which neither task runs out; the labels are then permuted with the epoch's seed. The realised IR
  count is ``round(ir_ratio * T)``, so the IR fraction is off by at most half a step.
- ``round_robin``: tasks alternate (IR first) until the task whose turn it is has no batch left.
- ``temperature``: each step draws its task with probability proportional to ``batches ** alpha``
  (seeded); the epoch ends at the first draw of a task that has no batch left.
- ``mixed`` (the naive baseline): every step takes one batch of every task; ``min(batches)`` steps.

The balancing modes (all but ``proportional``) leave the larger task's last batches unused in that
epoch; records are reshuffled every epoch, so a different tail goes unused each time. With a single
task (``ir_only`` / ``sts_only`` runs) every mode reduces to all of that task's batches in order.

Streams. By default a task is one stream (its sources mixed in every batch). With ``source_batches``
(``sampler.one_source_per_batch``, the authors' sampler: every data file a sub-dataset) a task's
global batches come from one source each: the task's k-th batch of the epoch is read from stream
``sources(task)[k]``, a seeded permutation of the per-source batch labels (``"ir:scifact"``, ...).
Together with the task labels above this is, in ``proportional`` mode, one uniform permutation of
all files' global batches, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

TASK_ORDER = ("ir", "sts")
MIXED = "mixed"
MODES = ("proportional", "ratio", "round_robin", "temperature", MIXED)
# Tasks each ``train.mode`` trains on (``mixed`` also replaces the sampler mode).
TRAIN_MODE_TASKS = {
    "joint": TASK_ORDER,
    "mixed": TASK_ORDER,
    "ir_only": ("ir",),
    "sts_only": ("sts",),
}


SOURCE_SEP = ":"


def _rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *more]))


def stream_key(task: str, source: str) -> str:
    """The name of one source's stream (dataset) of a task: ``"ir:scifact"``."""
    return f"{task}{SOURCE_SEP}{source}"


def stream_task(key: str) -> str:
    """The task of a stream: ``"ir:scifact"`` -> ``"ir"``, ``"ir"`` -> ``"ir"``."""
    return key.split(SOURCE_SEP, 1)[0]


@dataclass(frozen=True)
class TaskSchedule:
    """The task of every step of one epoch (see the module docstring for the modes)."""

    num_batches: Mapping[str, int]  # global batches per task in this epoch's data
    mode: str = "proportional"
    seed: int = 0
    epoch: int = 0
    ir_ratio: float = 0.5
    alpha: float = 0.5
    # {task: {stream key: global batches}}: tasks whose batches come from one source each; the
    # counts of a task sum to its ``num_batches``
    source_batches: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    tasks: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sampler mode {self.mode!r}: expected one of {MODES}")
        unknown = set(self.num_batches) - set(TASK_ORDER)
        if unknown or not self.num_batches:
            raise ValueError(
                f"num_batches {dict(self.num_batches)}: tasks must be from {TASK_ORDER}"
            )
        if any(n < 0 for n in self.num_batches.values()):
            raise ValueError(f"num_batches {dict(self.num_batches)}: counts must be >= 0")
        if self.mode == "ratio" and not 0.0 < self.ir_ratio < 1.0:
            raise ValueError(f"ir_ratio={self.ir_ratio}: must lie strictly between 0 and 1")
        for task, streams in self.source_batches.items():
            if task not in self.num_batches or sum(streams.values()) != self.num_batches[task]:
                raise ValueError(
                    f"source_batches[{task!r}] = {dict(streams)} must sum to num_batches of that "
                    f"task ({self.num_batches.get(task)})"
                )
            if any(stream_task(key) != task for key in streams):
                raise ValueError(f"source_batches[{task!r}]: stream keys must start with {task}:")
        object.__setattr__(self, "tasks", self._build())

    def _build(self) -> tuple[str, ...]:
        names = [t for t in TASK_ORDER if t in self.num_batches]
        counts = [int(self.num_batches[t]) for t in names]
        if self.mode == MIXED:
            if names != list(TASK_ORDER):
                raise ValueError(f"mode 'mixed' needs both tasks, got {names}")
            return (MIXED,) * min(counts)
        if len(names) == 1:
            return (names[0],) * counts[0]
        if sum(counts) == 0:
            return ()
        rng = _rng(self.seed, self.epoch)
        if self.mode == "proportional":
            labels = np.repeat(np.arange(len(names)), counts)
            return tuple(names[i] for i in rng.permutation(labels))
        if self.mode == "ratio":
            n_ir, steps = _ratio_counts(self.ir_ratio, *counts)
            labels = np.array([0] * n_ir + [1] * (steps - n_ir))
            return tuple(names[i] for i in rng.permutation(labels))
        if self.mode == "round_robin":
            turns = min(counts) * 2 + (counts[0] > counts[1])
            return tuple(names[i % 2] for i in range(turns))
        # temperature: draw until the drawn task is exhausted
        weights = np.asarray(counts, dtype=float) ** self.alpha
        draws = rng.choice(len(names), size=sum(counts) + 1, p=weights / weights.sum())
        used = np.stack([np.cumsum(draws == i) for i in range(len(names))])  # [tasks, draws]
        over = (used > np.asarray(counts)[:, None]).any(axis=0)
        return tuple(names[i] for i in draws[: int(np.argmax(over))])

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, step_in_epoch: int) -> str:
        return self.tasks[step_in_epoch]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def counts(self) -> dict[str, int]:
        """Steps per task label in this epoch (``mixed`` steps under the label ``"mixed"``)."""
        return {t: self.tasks.count(t) for t in dict.fromkeys(self.tasks)}

    def streams(self) -> tuple[str, ...]:
        """Every stream (dataset) the schedule reads: a task's sources, or the task itself."""
        keys: list[str] = []
        for task in self.num_batches:
            keys.extend(self.source_batches.get(task, {task: 0}))
        return tuple(keys)

    def sources(self, task: str) -> tuple[str, ...]:
        """The stream of each of ``task``'s global batches in this epoch, in the order they are used:
        a permutation seeded by (seed, epoch, task) of the per-source batch labels, or the task
        itself for every batch when its sources are mixed."""
        return self._sources[task]

    @cached_property
    def _sources(self) -> dict[str, tuple[str, ...]]:
        order = {}
        for task, n in self.num_batches.items():
            streams = self.source_batches.get(task)
            if not streams:
                order[task] = (task,) * n
                continue
            labels = [key for key, count in streams.items() for _ in range(count)]
            rng = _rng(self.seed, self.epoch, 1 + TASK_ORDER.index(task))
            order[task] = tuple(labels[i] for i in rng.permutation(len(labels)))
        return order

    def for_epoch(self, epoch: int) -> TaskSchedule:
        """The same schedule settings for another epoch."""
        return replace(self, epoch=epoch)

    @cached_property
    def first_step(self) -> int:
        """Global index of this epoch's first step (the lengths of all earlier epochs summed)."""
        return sum(len(self.for_epoch(e)) for e in range(self.epoch))

    def steps_from(self, global_step: int = 0) -> Iterator[tuple[int, str]]:
        """``(global_step, task)`` for this epoch's steps at or after ``global_step``."""
        start = max(global_step - self.first_step, 0)
        for i in range(start, len(self)):
            yield self.first_step + i, self.tasks[i]

    def consumed_before(self, global_step: int) -> dict[str, int]:
        """Batches each task (``ir``/``sts``) has used in this epoch before ``global_step``."""
        done = self.tasks[: min(max(global_step - self.first_step, 0), len(self))]
        if self.mode == MIXED:
            return {t: len(done) for t in self.num_batches}
        return {t: done.count(t) for t in self.num_batches}

    def streams_consumed_before(self, global_step: int) -> dict[str, int]:
        """Batches each stream (:meth:`streams`) has given in this epoch before ``global_step``."""
        used = {key: 0 for key in self.streams()}
        for task, n in self.consumed_before(global_step).items():
            for key in self.sources(task)[:n]:
                used[key] += 1
        return used

    def locate(self, global_step: int) -> tuple[int, int]:
        """``(epoch, step_in_epoch)`` of a global step index (epochs counted from 0)."""
        if global_step < 0:
            raise ValueError(f"global_step={global_step} must be >= 0")
        epoch, rest = 0, global_step
        while rest >= (length := len(self.for_epoch(epoch))):
            if length == 0:
                raise ValueError(
                    f"epoch {epoch} has no steps: num_batches={dict(self.num_batches)}"
                )
            epoch, rest = epoch + 1, rest - length
        return epoch, rest


def task_batches(
    stream_batches: Mapping[str, int],
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Global batches per stream -> (``num_batches`` per task, ``source_batches`` of the tasks
    split by source): ``{"ir:a": 3, "ir:b": 2, "sts": 5}`` -> ``({"ir": 5, "sts": 5},
    {"ir": {"ir:a": 3, "ir:b": 2}})``."""
    num_batches: dict[str, int] = {}
    source_batches: dict[str, dict[str, int]] = {}
    for key, n in stream_batches.items():
        task = stream_task(key)
        num_batches[task] = num_batches.get(task, 0) + n
        if key != task:
            source_batches.setdefault(task, {})[key] = n
    return num_batches, source_batches


def schedule_for_run(
    train_mode: str,
    sampler_mode: str,
    num_batches: Mapping[str, int],
    *,
    seed: int,
    ir_ratio: float = 0.5,
    alpha: float = 0.5,
    source_batches: Mapping[str, Mapping[str, int]] | None = None,
) -> TaskSchedule:
    """Epoch 0's schedule of a run: ``train_mode`` picks the tasks of ``num_batches`` (and of
    ``source_batches``, when batches are drawn one source at a time) to use."""
    tasks = TRAIN_MODE_TASKS[train_mode]
    by_source = source_batches or {}
    return TaskSchedule(
        {t: num_batches[t] for t in tasks},
        mode=MIXED if train_mode == MIXED else sampler_mode,
        seed=seed,
        ir_ratio=ir_ratio,
        alpha=alpha,
        source_batches={t: dict(by_source[t]) for t in tasks if t in by_source},
    )


def _ratio_counts(p: float, n_ir: int, n_sts: int) -> tuple[int, int]:
    """(IR steps, total steps): the longest epoch with round(p * T) IR steps that both tasks allow."""

    def ir_steps(total: int) -> int:
        return int(np.floor(p * total + 0.5))

    total = int(min((n_ir + 0.5) / p, (n_sts + 0.5) / (1.0 - p))) + 1
    while total > 0 and (ir_steps(total) > n_ir or total - ir_steps(total) > n_sts):
        total -= 1
    return ir_steps(total), total
