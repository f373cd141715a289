"""The prepare stage: ``data.sources`` -> ``<run dir>/prepared/``: ``{ir,sts}/<source>.parquet``,
``quarantine.jsonl`` and ``manifest.json`` (see ``pipeline.data.prepare``). Key: every input file's
sha256, the sources' config and ``PREPARE_VERSION``; the bad-fraction check runs on reuse too."""

from __future__ import annotations

import logging
from typing import Any

from pipeline import storage
from pipeline.config import DataConfig
from pipeline.data.prepare import MANIFEST, PREPARE_VERSION, prepare_sources, source_inputs
from pipeline.data.quarantine import check_bad_fraction
from pipeline.stage_cache import cached, input_hash, mark_done

log = logging.getLogger(__name__)


def out_dir(run_dir: str) -> str:
    """``<run dir>/prepared``."""
    return storage.join(run_dir, "prepared")


def manifest_path(run_dir: str) -> str:
    """``<run dir>/prepared/manifest.json``."""
    return storage.join(out_dir(run_dir), MANIFEST)


def run(data: DataConfig, run_dir: str) -> dict[str, Any]:
    """Prepare every source of ``data`` (reused when its key is unchanged); returns the manifest.
    Raises ``BadDataError`` when a source's bad fraction exceeds ``data.max_bad_fraction``."""
    out = out_dir(run_dir)
    inputs = source_inputs(data.sources, data.root)
    digest = input_hash(
        PREPARE_VERSION,
        [
            {"config": s.model_dump(mode="json"), "sha256": [i["sha256"] for i in inputs[s.name]]}
            for s in data.sources
        ],
    )
    done = cached(out, digest)
    if done is not None:
        log.info("inputs unchanged (hash %s): reusing %s", digest[:12], done["manifest"])
        manifest = storage.read_json(done["manifest"])
        check_bad_fraction(manifest["sources"], data.max_bad_fraction, manifest["quarantine"])
        return manifest
    manifest = prepare_sources(data.sources, data.root, out, data.max_bad_fraction, inputs)
    shards = [entry["shard"] for entry in manifest["sources"].values()]
    path = manifest_path(run_dir)
    mark_done(out, digest, manifest=path, outputs=[path, *shards])
    return manifest
