"""Hard-negative mining over the prepared IR sources: their shards -> ``<out_dir>/ir/<source>.parquet``
with hard negatives, ``ir_dev.json`` (the held-out dev queries and their qrels) and ``stats.json``.

BEIR sources are mined from their own corpus; other sources whose records lack negatives are mined
from the pool of their own positives; sources whose records all have negatives (TREC-QA, SNLI) are
copied through. Then records with more negatives than ``mining.num_negatives`` or more positives than
``mining.max_positives`` keep a seeded sample of them. Caching is the mine stage's (``pipeline.stages.mine``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.config import MiningConfig, TextSettings
from pipeline.data.beir import load_qrels, load_split
from pipeline.data.mining import cap_given, dev_slice, mine_negatives, split_dev_queries
from pipeline.data.mining_retrieval import Retriever, TextEncoder, build_retriever

DEV_FILE = "ir_dev.json"
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class MineSource:
    """One prepared IR source: its shard and, for BEIR sources, the folder and qrels split."""

    name: str
    shard: str
    beir_folder: str | None = None
    split: str = "train"


def mine_sources(
    sources: Sequence[MineSource],
    *,
    out_dir: str,
    mining: MiningConfig,
    seed: int,
    text: TextSettings,
    encoder_factory: Callable[[], TextEncoder] | None = None,
) -> dict[str, Any]:
    """Mine every source, cut the dev slice from ``mining.dev_source``, write outputs; returns the
    stats. Queries get ``text.instruction_ir``.

    ``encoder_factory`` is called once, and only when a source is mined with ``dense``/``both`` or a
    ``margin``.
    """
    dev_source, dev_queries = mining.dev_source, mining.dev_queries
    names = [source.name for source in sources]
    if dev_queries and dev_source not in names:
        raise ValueError(
            f"mining.dev_source={dev_source!r} is not a prepared IR source ({names}): "
            "name one of them or set mining.dev_queries=0"
        )
    if mining.encodes and encoder_factory is None:
        raise ValueError(
            f"mining.method={mining.method!r} / margin={mining.margin} needs an encoder"
        )
    load_encoder = functools.cache(encoder_factory) if mining.encodes else None
    stats: dict[str, Any] = {"sources": {}, "dev": None}
    for source in sources:
        records = storage.read_parquet(source.shard)
        entry: dict[str, Any] = {"held_out_dev": 0}
        if source.name == dev_source and dev_queries:
            records, stats["dev"] = _cut_dev(source, records, dev_queries, seed, out_dir)
            entry["held_out_dev"] = stats["dev"]["queries"]
        lacking = pc.sum(pc.equal(pc.list_value_length(records.column("negatives")), 0)).as_py()
        if lacking:
            table, mined, index_seconds = _mine_one(
                source, records, load_encoder() if load_encoder else None, mining, seed, text
            )
            entry.update(mined, index_seconds=index_seconds, copied=False)
        else:
            table = records
            entry.update(records=records.num_rows, passed_through=records.num_rows, copied=True)
        table, entry["capped"] = cap_given(
            table, max_positives=mining.max_positives, max_negatives=mining.num_negatives, seed=seed
        )
        entry["output"] = storage.join(out_dir, "ir", f"{source.name}.parquet")
        storage.write_parquet(entry["output"], table)
        stats["sources"][source.name] = entry
    if stats["dev"] is None:
        # a stale slice must not outlive its settings
        storage.remove_file(storage.join(out_dir, DEV_FILE))
    storage.write_json(storage.join(out_dir, STATS_FILE), stats)
    return stats


def mined_shards(out_dir: str) -> dict[str, str]:
    """Source name -> its mined IR shard, from ``stats.json``."""
    path = storage.join(out_dir, STATS_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"no {STATS_FILE} in {out_dir}: run `python -m jobs.mine` first")
    return {name: e["output"] for name, e in storage.read_json(path)["sources"].items()}


def _cut_dev(
    source: MineSource, records: pa.Table, n_dev: int, seed: int, out_dir: str
) -> tuple[pa.Table, dict[str, Any]]:
    """Hold out the dev slice, write ``ir_dev.json``; returns (training records, dev entry)."""
    if source.beir_folder is None:
        raise ValueError(
            f"mining.dev_source={source.name!r} must be a BEIR source (its qrels and corpus are "
            "what the dev evaluation searches)"
        )
    if source.split == "test":
        raise ValueError(
            f"mining.dev_source={source.name!r} reads the test split: the IR dev slice is cut "
            "from training queries only (set the source's split to train)"
        )
    train, dev = split_dev_queries(records, n_dev, seed)
    path = storage.join(out_dir, DEV_FILE)
    qrels = load_qrels(source.beir_folder, source.split)
    storage.write_json(
        path, dev_slice(dev, source=source.name, source_path=source.beir_folder, qrels=qrels)
    )
    return train, {"source": source.name, "queries": dev.num_rows, "output": path}


def _mine_one(
    source: MineSource,
    records: pa.Table,
    encoder: TextEncoder | None,
    mining: MiningConfig,
    seed: int,
    text: TextSettings,
) -> tuple[pa.Table, dict[str, Any], float]:
    """Mine one source: (table, stats dict, seconds spent loading and indexing the corpus)."""
    start = time.perf_counter()
    if source.beir_folder is not None:
        split = load_split(source.beir_folder, source.split)
        corpus_ids = list(split.corpus)
        corpus_texts = [split.document_text(doc_id) for doc_id in corpus_ids]
        qrels = split.qrels
    else:  # the source's own positives are the pool
        corpus_ids = corpus_texts = sorted(
            {text for texts in records.column("positives").to_pylist() for text in texts}
        )
        qrels = None
    lengths = {
        "max_length_query": text.max_length_query,
        "max_length_passage": text.max_length_passage,
        "instruction": text.instruction_ir,
    }
    retriever: Retriever = build_retriever(mining.method, corpus_texts, encoder=encoder, **lengths)
    index_seconds = time.perf_counter() - start
    table, stats = mine_negatives(
        records,
        corpus_ids,
        corpus_texts,
        retriever=retriever,
        num_negatives=mining.num_negatives,
        rank_window=mining.rank_window,
        margin=mining.margin,
        seed=seed,
        encoder=encoder,
        qrels=qrels,
        **lengths,
    )
    return table, stats.to_dict(), index_seconds
