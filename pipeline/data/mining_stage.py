"""The mine stage: prepared IR shards -> ``<out_dir>/ir/<source>.parquet`` with hard negatives,
``ir_dev.json`` (the held-out dev queries and their qrels) and ``stats.json``.

BEIR sources are mined from their own corpus; other sources whose records lack negatives are mined
from the pool of their own positives; sources whose records all have negatives (TREC-QA, SNLI) are
copied through. The stage is skipped when ``stats.json`` records the same input hash (prepared
manifest hash + mining settings) and every output it lists exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.config import Config
from pipeline.data.beir import load_qrels, load_split
from pipeline.data.mining import dev_slice, mine_negatives, split_dev_queries
from pipeline.data.mining_retrieval import Method, Retriever, TextEncoder, build_retriever
from pipeline.data.prepare import load_manifest
from pipeline.inference import on_inference_device

DEV_FILE = "ir_dev.json"
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class MineSource:
    """One prepared IR source: its shard and, for BEIR sources, the folder and qrels split."""

    name: str
    shard: str
    beir_folder: str | None = None
    split: str = "train"


def input_hash(prepared_hash: str, settings: dict[str, Any]) -> str:
    """The stage's input hash: the prepared manifest's hash and every setting that changes output."""
    payload = json.dumps({"prepared": prepared_hash, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def fresh_stats(out_dir: str, digest: str) -> dict[str, Any] | None:
    """The previous ``stats.json`` when it has hash ``digest`` and all its outputs exist, else None."""
    path = storage.join(out_dir, STATS_FILE)
    if not storage.exists(path):
        return None
    stats = storage.read_json(path)
    outputs = [entry["output"] for entry in stats["sources"].values()]
    if stats.get("dev"):
        outputs.append(stats["dev"]["output"])
    if stats.get("input_hash") != digest or not all(map(storage.exists, outputs)):
        return None
    return stats


def mine_sources(
    sources: Sequence[MineSource],
    *,
    out_dir: str,
    digest: str,
    method: Method,
    num_negatives: int,
    rank_window: tuple[int, int],
    margin: float | None,
    seed: int,
    dev_source: str,
    dev_queries: int,
    encoder_factory: Callable[[], TextEncoder] | None = None,
    max_length_query: int = 64,
    max_length_passage: int = 256,
    instruction: str = "",
) -> dict[str, Any]:
    """Mine every source, cut the dev slice from ``dev_source``, write outputs; returns the stats.

    ``encoder_factory`` is called once, and only when a source is mined with ``dense``/``both`` or a
    ``margin``.
    """
    names = [source.name for source in sources]
    if dev_queries and dev_source not in names:
        raise ValueError(
            f"mining.dev_source={dev_source!r} is not a prepared IR source ({names}): "
            "name one of them or set mining.dev_queries=0"
        )
    encodes = method != "bm25" or margin is not None
    if encodes and encoder_factory is None:
        raise ValueError(f"mining.method={method!r} / margin={margin} needs an encoder")
    load_encoder = functools.cache(encoder_factory) if encodes else None
    stats: dict[str, Any] = {"input_hash": digest, "sources": {}, "dev": None}
    for source in sources:
        records = storage.read_parquet(source.shard)
        entry: dict[str, Any] = {"held_out_dev": 0}
        if source.name == dev_source and dev_queries:
            records, stats["dev"] = _cut_dev(source, records, dev_queries, seed, out_dir)
            entry["held_out_dev"] = stats["dev"]["queries"]
        lacking = pc.sum(pc.equal(pc.list_value_length(records.column("negatives")), 0)).as_py()
        if lacking:
            table, mining, index_seconds = _mine_one(
                source,
                records,
                load_encoder() if load_encoder else None,
                method=method,
                num_negatives=num_negatives,
                rank_window=rank_window,
                margin=margin,
                seed=seed,
                max_length_query=max_length_query,
                max_length_passage=max_length_passage,
                instruction=instruction,
            )
            entry.update(mining, index_seconds=index_seconds, copied=False)
        else:
            table = records
            entry.update(records=records.num_rows, passed_through=records.num_rows, copied=True)
        entry["output"] = storage.join(out_dir, "ir", f"{source.name}.parquet")
        storage.write_parquet(entry["output"], table)
        stats["sources"][source.name] = entry
    if stats["dev"] is None:
        _remove(storage.join(out_dir, DEV_FILE))  # a stale slice must not outlive its settings
    storage.write_json(storage.join(out_dir, STATS_FILE), stats)
    return stats


def mined_shards(out_dir: str) -> dict[str, str]:
    """Source name -> its mined IR shard, from ``stats.json``."""
    path = storage.join(out_dir, STATS_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"no {STATS_FILE} in {out_dir}: run `python -m jobs.mine` first")
    return {name: e["output"] for name, e in storage.read_json(path)["sources"].items()}


def _remove(path: str) -> None:
    if storage.exists(path):
        fs, inner = storage.filesystem(path)
        fs.delete_file(inner)


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
    *,
    method: Method,
    num_negatives: int,
    rank_window: tuple[int, int],
    margin: float | None,
    seed: int,
    max_length_query: int,
    max_length_passage: int,
    instruction: str,
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
    retriever: Retriever = build_retriever(
        method,
        corpus_texts,
        encoder=encoder,
        max_length_query=max_length_query,
        max_length_passage=max_length_passage,
        instruction=instruction,
    )
    index_seconds = time.perf_counter() - start
    table, stats = mine_negatives(
        records,
        corpus_ids,
        corpus_texts,
        retriever=retriever,
        num_negatives=num_negatives,
        rank_window=rank_window,
        margin=margin,
        seed=seed,
        encoder=encoder,
        qrels=qrels,
        max_length_query=max_length_query,
        max_length_passage=max_length_passage,
        instruction=instruction,
    )
    return table, stats.to_dict(), index_seconds


def _settings(cfg: Config) -> dict[str, Any]:
    """Everything that changes the mined output (the model only when mining encodes text)."""
    settings = {"mining": cfg.mining.model_dump(mode="json"), "seed": cfg.run.seed}
    if cfg.mining.method != "bm25" or cfg.mining.margin is not None:
        settings["model"] = cfg.model.model_dump(mode="json")
    return settings


def _load_encoder(cfg: Config):
    from pipeline.inference import inference_device
    from pipeline.model.encoder import Encoder
    from pipeline.model.loading import resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path, cfg.model.tiny_layers, cfg.model.tiny_hidden)
    print(f"[mine] encoder {cfg.model.name_or_path} -> {path}")
    return Encoder.from_pretrained(
        path,
        pooling=cfg.model.pooling,
        normalize=True,
        device=inference_device(cfg.train.use_gpu),
        bf16=cfg.eval.bf16,
    )


def run_mining(cfg: Config) -> dict[str, Any]:
    """The mining stage of a run: ``<run dir>/prepared``'s IR shards -> ``<run dir>/mined``
    (skipped when inputs and settings are unchanged); returns ``stats.json``. Dense mining on a GPU
    run encodes in a Ray task holding a GPU (``pipeline.inference``)."""
    prepared = storage.join(cfg.run.dir, "prepared")
    out_dir = storage.join(cfg.run.dir, "mined")
    manifest = load_manifest(prepared)
    if manifest is None:
        raise FileNotFoundError(
            f"no prepared data in {prepared}: run `python -m jobs.prepare` first"
        )
    digest = input_hash(manifest["input_hash"], _settings(cfg))
    stats = fresh_stats(out_dir, digest)
    if stats is not None:
        print(f"[mine] inputs unchanged (hash {digest[:12]}): reusing {out_dir}")
        return stats
    sources = [
        MineSource(
            name=name,
            shard=entry["shard"],
            beir_folder=cfg.resolve_data_path(entry["path"]) if entry["format"] == "beir" else None,
            split=entry["split"],
        )
        for name, entry in manifest["sources"].items()
        if entry["task"] == "ir"
    ]
    encodes = cfg.mining.method != "bm25" or cfg.mining.margin is not None
    return on_inference_device(  # dense mining on a GPU run: in a task holding a GPU
        cfg.train.use_gpu and encodes,
        mine_sources,
        sources,
        out_dir=out_dir,
        digest=digest,
        method=cfg.mining.method,
        num_negatives=cfg.mining.num_negatives,
        rank_window=cfg.mining.rank_window,
        margin=cfg.mining.margin,
        seed=cfg.run.seed,
        dev_source=cfg.mining.dev_source,
        dev_queries=cfg.mining.dev_queries,
        encoder_factory=lambda: _load_encoder(cfg),
        max_length_query=cfg.model.max_length_query,
        max_length_passage=cfg.model.max_length_passage,
        instruction=cfg.model.instruction_ir,
    )
