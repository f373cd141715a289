"""Single-task micro-batches for one training worker: walk the epoch's :class:`TaskSchedule` and pull
the next micro-batch from that task's shard, padded to the longest sequence in the micro-batch.

Every worker walks the same schedule, so at every step all workers are on the same task (and, when
the schedule draws a task's batches one source at a time, the same source), and each holds
``per_worker_batch[task]`` = 1/world of that step's global batch (its shard of the stream's dataset,
from ``ray.train.get_dataset_shard(stream)``; Ray Train splits every dataset with
``streaming_split(world, equal=True)``).

Order and reproducibility. Each shard is read once per epoch in full micro-batches (``drop_last``),
reshuffled locally with a seed from (seed, epoch, stream) and a buffer of ``shuffle_buffer`` rows
(the whole shard when it fits). Which records each worker holds is fixed by the dataset's seeded
shuffle and :func:`~pipeline.data.ray_datasets.ingest_config` (``preserve_order``). So, for the same
shards, world size and Ray block layout, the micro-batch of every (worker, step) is the same in every
run, and a run restarted at a global step (``start_step``) skips the batches the epoch has already
consumed and continues exactly as the uninterrupted run did.
"""

from __future__ import annotations

import time
import warnings
import zlib
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from pipeline.data.schedule import MIXED, TASK_ORDER, TaskSchedule, stream_task
from pipeline.model.tokenize import pad

Batch = dict[str, Any]


class Shard(Protocol):
    """What the iterator needs of a ``ray.data.DataIterator``."""

    def iter_batches(self, **kwargs: Any) -> Any: ...


def per_worker_batches(global_batch: Mapping[str, int], world_size: int) -> dict[str, int]:
    """Per-worker micro-batch size of every task; each global batch must split evenly."""
    uneven = {t: b for t, b in global_batch.items() if b % world_size}
    if uneven:
        raise ValueError(f"global batch sizes {uneven} are not divisible by {world_size} workers")
    return {t: b // world_size for t, b in global_batch.items()}


def _sequences(arr: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """A list<int> column as one numpy array per row."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.split(values, np.cumsum(arr.value_lengths().to_numpy(zero_copy_only=False))[:-1])


def _pad_column(table: pa.Table, name: str, pad_id: int) -> dict[str, torch.Tensor]:
    """``{input_ids, attention_mask[, pool_mask]}`` [B, L] from ``<name>_input_ids`` (+ pool mask)."""
    ids = _sequences(table.column(f"{name}_input_ids"))
    masks = {"attention_mask": [np.ones(len(s), dtype=np.int64) for s in ids]}
    if f"{name}_pool_mask" in table.column_names:
        masks["pool_mask"] = _sequences(table.column(f"{name}_pool_mask"))
    return pad(ids, masks, pad_id)


def _pad_nested(
    column: pa.ChunkedArray, pad_id: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A list<list<int>> column -> ``{input_ids, attention_mask}`` [B, K, L] and a mask [B, K]."""
    outer = column.combine_chunks()
    counts = torch.tensor(outer.value_lengths().to_numpy(zero_copy_only=False), dtype=torch.long)
    flat = _sequences(outer.flatten())
    padded = pad(flat, {"attention_mask": [np.ones(len(s), dtype=np.int64) for s in flat]}, pad_id)
    slots = int(counts.max()) if len(counts) else 0
    mask = torch.arange(slots)[None, :] < counts[:, None]  # [B, K]
    length = padded["input_ids"].shape[1]
    out = {
        "input_ids": torch.full((len(counts), slots, length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(counts), slots, length), dtype=torch.long),
    }
    for key, value in padded.items():
        out[key][mask] = value  # row-major order of the mask = order of the flattened texts
    return out, mask


def collate_ir(table: pa.Table, pad_id: int) -> Batch:
    """IR micro-batch: ``query`` [B, Lq]; ``positives`` [B, P, Lp] with ``positive_mask`` [B, P];
    ``negatives`` [B, N, Ln] with ``negative_mask`` [B, N] (N may be 0); ``ids``, ``sources``."""
    positives, positive_mask = _pad_nested(table.column("positives_input_ids"), pad_id)
    negatives, negative_mask = _pad_nested(table.column("negatives_input_ids"), pad_id)
    return {
        "query": _pad_column(table, "query", pad_id),
        "positives": positives,
        "positive_mask": positive_mask,
        "negatives": negatives,
        "negative_mask": negative_mask,
        "ids": table.column("id").to_pylist(),
        "sources": table.column("source").to_pylist(),
    }


def collate_sts(table: pa.Table, pad_id: int) -> Batch:
    """STS micro-batch: ``sentence1`` / ``sentence2`` [B, L] each, ``score`` [B] float32 in [0, 1]."""
    return {
        "sentence1": _pad_column(table, "sentence1", pad_id),
        "sentence2": _pad_column(table, "sentence2", pad_id),
        "score": torch.tensor(table.column("score").to_numpy(), dtype=torch.float32),
        "ids": table.column("id").to_pylist(),
        "sources": table.column("source").to_pylist(),
    }


COLLATE = {"ir": collate_ir, "sts": collate_sts}
MIN_PASSAGE_TOKENS = 8  # below this a budget would train on stumps: refuse it instead


def _cut(seqs: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """``seqs`` [..., L] cut to ``length`` tokens; a cut sequence keeps its own last token (the
    tokenizer's SEP/EOS) in its last kept position."""
    ids, mask = seqs["input_ids"], seqs["attention_mask"]
    if ids.shape[-1] <= length:
        return seqs
    lengths = mask.sum(-1, keepdim=True)
    last = ids.gather(-1, (lengths - 1).clamp(min=0))
    cut_ids = ids[..., :length].clone()
    was_cut = lengths > length
    cut_ids[..., -1:] = torch.where(was_cut, last, cut_ids[..., -1:])
    return {**seqs, "input_ids": cut_ids, "attention_mask": mask[..., :length].contiguous()}


def padded_tokens(batch: Batch) -> int:
    """Tokens (padding included) an IR micro-batch puts through the encoder."""
    return sum(batch[key]["input_ids"].numel() for key in ("query", "positives", "negatives"))


def cap_ir_tokens(batch: Batch, max_tokens: int, where: str = "") -> Batch:
    """Shorten an IR micro-batch's passages (positives and negatives alike) so its padded tokens fit
    ``max_tokens``, with a warning; the batch is unchanged when it fits. The queries are kept whole.
    Raises ``ValueError`` if the queries alone leave passages fewer than ``MIN_PASSAGE_TOKENS``."""
    total = padded_tokens(batch)
    if total <= max_tokens:
        return batch
    queries = batch["query"]["input_ids"].numel()
    slots = batch["positives"]["input_ids"].shape[:2].numel()
    slots += batch["negatives"]["input_ids"].shape[:2].numel()
    length = (max_tokens - queries) // max(slots, 1)
    if length < MIN_PASSAGE_TOKENS:
        raise ValueError(
            f"{where}IR micro-batch of {slots} passages does not fit train.max_tokens_per_batch="
            f"{max_tokens} with at least {MIN_PASSAGE_TOKENS} tokens each: raise the budget or "
            "lower ir_global_batch / mining.num_negatives"
        )
    warnings.warn(
        f"{where}IR micro-batch has {total} padded tokens > train.max_tokens_per_batch="
        f"{max_tokens}: its passages are truncated to {length} tokens",
        stacklevel=2,
    )
    return {
        **batch,
        "positives": _cut(batch["positives"], length),
        "negatives": _cut(batch["negatives"], length),
        "passage_tokens_cap": length,
    }


def shuffle_seed(seed: int, epoch: int, stream: str) -> int:
    """Seed of a stream's local shuffle in one epoch (same on every worker, distinct per epoch and
    per stream; a whole task's stream ``"ir"`` keeps the seed it had before streams existed)."""
    entropy = [seed, epoch, TASK_ORDER.index(stream_task(stream))]
    if stream != stream_task(stream):
        entropy.append(zlib.crc32(stream.encode()))
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def timed(items: Iterable) -> Iterator[tuple[float, Any]]:
    """``(seconds the next item took to arrive, item)`` for each item: the training loop's
    ``data_wait_s`` (reading, collating and padding a batch happen inside ``next``)."""
    iterator = iter(items)
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - started, item


class SingleTaskBatches:
    """Iterate one epoch as ``(global_step, task, batch)``; ``task == "mixed"`` steps (schedule mode
    ``mixed``) give ``batch = {"ir": ..., "sts": ...}``. ``shards`` holds one shard per stream of
    the schedule (:meth:`TaskSchedule.streams`: a task, or a task's sources). Steps before
    ``start_step`` are skipped (an epoch that ends before it yields nothing and reads no data). With
    ``max_tokens``, IR micro-batches over that many padded tokens get shorter passages
    (:func:`cap_ir_tokens`)."""

    def __init__(
        self,
        shards: Mapping[str, Shard],
        schedule: TaskSchedule,
        per_worker_batch: Mapping[str, int],
        pad_id: int,
        start_step: int = 0,
        shuffle_buffer: int = 10_000,
        max_tokens: int | None = None,
    ) -> None:
        missing = [k for k in schedule.streams() if k not in shards]
        missing += [t for t in schedule.num_batches if t not in per_worker_batch]
        if missing:
            raise ValueError(f"no shard or per-worker batch size for stream(s) {missing}")
        self.shards = shards
        self.schedule = schedule
        self.per_worker_batch = per_worker_batch
        self.pad_id = pad_id
        self.start_step = start_step
        self.shuffle_buffer = shuffle_buffer
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        done = min(max(self.start_step - self.schedule.first_step, 0), len(self.schedule))
        return len(self.schedule) - done

    def __iter__(self) -> Iterator[tuple[int, str, Batch]]:
        skip = self.schedule.streams_consumed_before(self.start_step)
        used = self.schedule.consumed_before(self.start_step)  # batches of each task so far
        streams: dict[str, Generator[pa.Table, None, None]] = {}
        try:
            for step, label in self.schedule.steps_from(self.start_step):
                tasks = list(self.schedule.num_batches) if label == MIXED else [label]
                batch = {}
                for task in tasks:
                    key = self.schedule.sources(task)[used[task]]
                    used[task] += 1
                    if key not in streams:
                        streams[key] = self._open(key, skip[key])
                    batch[task] = COLLATE[task](self._next(streams[key], key, step), self.pad_id)
                if self.max_tokens and "ir" in batch:
                    batch["ir"] = cap_ir_tokens(batch["ir"], self.max_tokens, f"step {step}: ")
                yield step, label, batch if label == MIXED else batch[label]
        finally:
            for stream in streams.values():
                stream.close()  # release the reader (and its prefetch) if batches were left unread

    def _open(self, key: str, skip: int) -> Generator[pa.Table, None, None]:
        batches = iter(
            self.shards[key].iter_batches(
                batch_size=self.per_worker_batch[stream_task(key)],
                batch_format="pyarrow",
                drop_last=True,
                local_shuffle_buffer_size=self.shuffle_buffer or None,
                local_shuffle_seed=shuffle_seed(self.schedule.seed, self.schedule.epoch, key),
            )
        )
        for _ in range(skip):
            self._next(batches, key, self.start_step)
        return batches

    def _next(self, stream: Iterator[pa.Table], key: str, step: int) -> pa.Table:
        try:
            return next(stream)
        except StopIteration:
            raise RuntimeError(
                f"the {key} shard ran out of micro-batches at step {step}: the schedule's "
                f"num_batches must be count_batches(...) with global batch = "
                f"{self.per_worker_batch[stream_task(key)]} x world size"
            ) from None
