"""Prepare the training data: every source in ``data.sources`` -> Parquet shards + manifest.

    python -m jobs.prepare --config configs/reproduce.yaml
    python -m jobs.prepare --config configs/reproduce.yaml data.max_bad_fraction=0.05

Writes ``<run dir>/prepared/{ir,sts}/<source>.parquet``, ``quarantine.jsonl`` and ``manifest.json``;
skipped when the inputs have not changed.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.data.prepare import BadDataError
from pipeline.stages import prepare


def main(cfg: Config) -> dict[str, Any]:
    """Prepare ``cfg.data.sources`` under ``<run dir>/prepared``; returns the manifest."""
    manifest = prepare.run(cfg.data, cfg.run.dir)
    for name, entry in manifest["sources"].items():
        reasons = f" {entry['reasons']}" if entry["reasons"] else ""
        skipped = f"; left out by design {entry['skipped']}" if entry["skipped"] else ""
        print(
            f"{name} ({entry['task']}, {entry['format']}): read {entry['read']}, "
            f"kept {entry['kept']}, quarantined {entry['quarantined']}{reasons}{skipped}"
        )
    print(f"manifest: {prepare.manifest_path(cfg.run.dir)}")
    return manifest


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_main(main, description=__doc__, checks=("data", "run"), known=(BadDataError,))
