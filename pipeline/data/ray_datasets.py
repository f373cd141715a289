"""One Ray Dataset per stream from the prepared Parquet shards, tokenised in ``map_batches``.

A stream is a task (``"ir"``: its sources read together, their ``source`` tag kept) or, when batches
are drawn one source at a time, one source of a task (``"ir:scifact"``; see
:mod:`pipeline.data.schedule`). Each is shuffled once with a fixed seed (so sources and files are
mixed before the dataset is split across workers), and tokenised without
padding (padding happens per micro-batch, in :mod:`pipeline.data.batches`). Text columns are dropped
after tokenisation; the small ``id`` and ``source`` strings stay for bookkeeping, so consume these
datasets with ``iter_batches`` (as :class:`~pipeline.data.batches.SingleTaskBatches` does), or
``select_columns`` the token columns before ``iter_torch_batches``, which fails on strings.

Columns after tokenisation:
- IR:  id, source, query_input_ids list<int32>, query_pool_mask list<int8>,
       positives_input_ids list<list<int32>> (1..P per query), negatives_input_ids (0..N per query)
- STS: id, source, sentence1_input_ids, sentence1_pool_mask, sentence2_input_ids,
       sentence2_pool_mask, score float32 in [0, 1]
Pool masks are 0 on the instruction prefix (see :func:`pipeline.model.tokenize.tokenize`);
passages carry no instruction, so their pool mask is their attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train

from pipeline import storage
from pipeline.config import TextSettings
from pipeline.data.schedule import stream_task
from pipeline.model.tokenize import tokenize
from pipeline.storage import filesystem

TOKENS = pa.list_(pa.int32())
MASK = pa.list_(pa.int8())


@dataclass(frozen=True)
class TaskBatches:
    """How many full global batches a task's rows make. ``dropped`` rows fill no full global batch;
    which ones changes with every epoch's reshuffle, except the at most world-1 rows that
    ``streaming_split(equal=True)`` truncates (fixed by the dataset's seed)."""

    rows: int
    global_batch: int

    @property
    def batches(self) -> int:
        return self.rows // self.global_batch

    @property
    def dropped(self) -> int:
        return self.rows - self.batches * self.global_batch


def task_rows(shards: dict[str, list[str]]) -> dict[str, int]:
    """Rows per stream, from the Parquet footers of its shards (local paths or URIs)."""
    rows = {}
    for key, paths in shards.items():
        total = 0
        for path in paths:
            fs, inner = filesystem(path)
            total += pq.read_metadata(inner, filesystem=fs).num_rows
        rows[key] = total
    return rows


def count_batches(
    shards: dict[str, list[str]], global_batch: dict[str, int]
) -> dict[str, TaskBatches]:
    """Rows, full global batches and dropped tail per stream (``global_batch`` is per task); the
    schedule's ``num_batches`` input is ``{task: c.batches for task, c in count_batches(...).items()}``
    (summed over a task's sources when ``shards`` is keyed by source streams)."""
    return {
        key: TaskBatches(rows, global_batch[stream_task(key)])
        for key, rows in task_rows(shards).items()
    }


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(storage.fetch(path))  # a URI: copied to this node


def _token_columns(name: str, enc: dict[str, list[list[int]]], with_pool: bool) -> dict:
    columns = {f"{name}_input_ids": pa.array(enc["input_ids"], type=TOKENS)}
    if with_pool:
        columns[f"{name}_pool_mask"] = pa.array(enc["pool_mask"], type=MASK)
    return columns


def _nested_tokens(tokenizer, lists: pa.ChunkedArray, max_length: int) -> pa.ListArray:
    """Tokenise a list<string> column into list<list<int32>>, one inner list per text."""
    lists = lists.combine_chunks()
    counts = lists.value_lengths().to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    texts = lists.flatten().to_pylist()
    ids = tokenize(tokenizer, texts, max_length)["input_ids"] if texts else []
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, type=TOKENS))


def tokenize_ir(
    batch: pa.Table,
    *,
    tokenizer_path: str,
    max_length_query: int,
    max_length_passage: int,
    instruction: str = "",
) -> pa.Table:
    """IR records -> token columns (the ``map_batches`` function; plain pyarrow in and out)."""
    tokenizer = _tokenizer(tokenizer_path)
    query = tokenize(tokenizer, batch.column("query").to_pylist(), max_length_query, instruction)
    return pa.table(
        {
            "id": batch.column("id"),
            "source": batch.column("source"),
            **_token_columns("query", query, with_pool=True),
            "positives_input_ids": _nested_tokens(
                tokenizer, batch.column("positives"), max_length_passage
            ),
            "negatives_input_ids": _nested_tokens(
                tokenizer, batch.column("negatives"), max_length_passage
            ),
        }
    )


def tokenize_sts(
    batch: pa.Table, *, tokenizer_path: str, max_length: int, instruction: str = ""
) -> pa.Table:
    """STS records -> token columns (the ``map_batches`` function; plain pyarrow in and out)."""
    tokenizer = _tokenizer(tokenizer_path)
    columns = {"id": batch.column("id"), "source": batch.column("source")}
    for side in ("sentence1", "sentence2"):
        enc = tokenize(tokenizer, batch.column(side).to_pylist(), max_length, instruction)
        columns.update(_token_columns(side, enc, with_pool=True))
    columns["score"] = batch.column("score")
    return pa.table(columns)


def build_task_datasets(
    shards: dict[str, list[str]],
    *,
    tokenizer_path: str,
    text: TextSettings,
    seed: int,
    tokenize_batch: int = 256,
) -> dict[str, ray.data.Dataset]:
    """``{stream: Dataset}`` over the shards of each stream (a task, or a task's source; see
    ``pipeline.train.driver.training_streams``), lazily read, shuffled once with ``seed`` and
    tokenised with ``text``'s limits and instructions. Hand the dict to ``TorchTrainer(datasets=...)`` with
    ``dataset_config=ingest_config()``."""
    kwargs = {
        "ir": {
            "max_length_query": text.max_length_query,
            "max_length_passage": text.max_length_passage,
            "instruction": text.instruction_ir,
        },
        "sts": {"max_length": text.max_length_sts, "instruction": text.instruction_sts},
    }
    functions = {"ir": tokenize_ir, "sts": tokenize_sts}
    datasets = {}
    for key, paths in shards.items():
        task = stream_task(key)
        if not paths:
            raise ValueError(
                f"task {task!r} has no prepared shards: add a {task} source to "
                f"data.sources or train a mode without {task}"
            )
        ds = ray.data.read_parquet(list(paths)).random_shuffle(seed=seed)
        datasets[key] = ds.map_batches(
            functions[task],
            batch_format="pyarrow",
            batch_size=tokenize_batch,
            fn_kwargs={"tokenizer_path": tokenizer_path, **kwargs[task]},
        )
    return datasets


def ingest_config() -> ray.train.DataConfig:
    """Ray Train's default ingest (``streaming_split(world, equal=True)`` of every dataset) with
    ``preserve_order``: which rows reach which worker, in which order, is then the same in every run
    over the same shards and Ray block layout (Ray drops locality hints under ``preserve_order``)."""
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(execution_options=options)
