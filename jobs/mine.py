"""Mine hard negatives for the prepared IR sources and cut the IR dev slice.

    python -m jobs.mine --config configs/reproduce.yaml
    python -m jobs.mine --config configs/reproduce.yaml mining.rank_window=[10,50] mining.num_negatives=7

Reads ``<run dir>/prepared`` (run ``jobs.prepare`` first); writes ``<run dir>/mined/ir/<source>.parquet``,
``mined/ir_dev.json`` and ``mined/stats.json``; skipped when the inputs and settings have not changed.
"""

from __future__ import annotations

from typing import Any

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.stages import mine


def _fraction(entry: dict[str, Any]) -> str:
    fraction = entry["qrels_positive_fraction"]
    return "n/a (no qrels)" if fraction is None else f"{fraction:.4f}"


def main(cfg: Config) -> dict[str, Any]:
    """Mine ``<run dir>/prepared``'s IR shards into ``<run dir>/mined``; returns ``stats.json``."""
    stats = mine.run(cfg)
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
    run_main(main, description=__doc__, checks=("data", "run"))
