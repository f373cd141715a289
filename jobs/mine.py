"""Mine hard negatives for the prepared IR sources and cut the IR dev slice.

    python -m jobs.mine --config configs/demo.yaml
    python -m jobs.mine --config configs/demo.yaml mining.rank_window=[10,50] mining.num_negatives=7

Reads ``<run dir>/prepared`` (run ``jobs.prepare`` first); writes ``<run dir>/mined/ir/<source>.parquet``,
``mined/ir_dev.json`` and ``mined/stats.json``; skipped when the inputs and settings have not changed.
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline import storage
from pipeline.config import Config, parse_cli
from pipeline.data.mining_stage import MineSource, fresh_stats, input_hash, mine_sources
from pipeline.data.prepare import load_manifest


def _settings(cfg: Config) -> dict[str, Any]:
    """Everything that changes the mined output (the model only when mining encodes text)."""
    settings = {"mining": cfg.mining.model_dump(mode="json"), "seed": cfg.run.seed}
    if cfg.mining.method != "bm25" or cfg.mining.margin is not None:
        settings["model"] = cfg.model.model_dump(mode="json")
    return settings


def _load_encoder(cfg: Config):
    from pipeline.model.encoder import Encoder
    from pipeline.model.loading import resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path, cfg.model.tiny_layers, cfg.model.tiny_hidden)
    print(f"[mine] encoder {cfg.model.name_or_path} -> {path}")
    return Encoder.from_pretrained(path, pooling=cfg.model.pooling, normalize=True)


def _fraction(entry: dict[str, Any]) -> str:
    fraction = entry["qrels_positive_fraction"]
    return "n/a (no qrels)" if fraction is None else f"{fraction:.4f}"


def main(cfg: Config) -> dict[str, Any]:
    """Mine ``<run dir>/prepared``'s IR shards into ``<run dir>/mined``; returns ``stats.json``."""
    prepared = storage.join(cfg.run.dir, "prepared")
    out_dir = storage.join(cfg.run.dir, "mined")
    manifest = load_manifest(prepared)
    if manifest is None:
        sys.exit(f"no prepared data in {prepared}: run `python -m jobs.prepare` first")
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
    stats = mine_sources(
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
    for name, entry in stats["sources"].items():
        if entry["copied"]:
            print(f"[mine] {name}: {entry['records']} records already have negatives, copied")
            continue
        print(
            f"[mine] {name}: {entry['mined']} mined, {entry['passed_through']} kept their negatives, "
            f"{entry['held_out_dev']} held out for dev; negatives/record {entry['negatives_histogram']}, "
            f"{entry['short']} short; qrels positives among negatives {_fraction(entry)}; "
            f"index {entry['index_seconds']:.1f} s, "
            f"mine {entry['seconds']:.1f} s -> {entry['output']}"
        )
    if stats["dev"]:
        print(f"[mine] dev slice: {stats['dev']['queries']} queries -> {stats['dev']['output']}")
    return stats


if __name__ == "__main__":
    main(parse_cli(sys.argv[1:], description=__doc__))
