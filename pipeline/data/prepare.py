"""Data preparation: every configured source -> ``<out_dir>/<task>/<source>.parquet``, plus
``quarantine.jsonl`` (every bad record with file:line) and ``manifest.json`` (counts, reasons, input
sha256s, shard paths). Caching is the prepare stage's (``pipeline.stages.prepare``): it keys on
:func:`source_inputs` and :data:`PREPARE_VERSION`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow.compute as pc

from pipeline import storage
from pipeline.config import SourceConfig
from pipeline.data.quarantine import (
    BadDataError,
    bad_fraction,
    check_bad_fraction,
    reason_counts,
    write_quarantine,
)
from pipeline.data.readers import ReadResult, check_source, read_source, source_files

__all__ = [
    "BadDataError",
    "prepare_sources",
    "prepared_shards",
    "prepared_sources",
    "load_manifest",
    "shard_path",
    "source_inputs",
]

PREPARE_VERSION = 1  # bump when the readers change what they write, so old outputs are not reused
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
TASKS = ("ir", "sts")


def shard_path(out_dir: str, task: str, name: str) -> str:
    """Where the records of source ``name`` go: ``<out_dir>/<task>/<name>.parquet``."""
    return storage.join(out_dir, task, f"{name}.parquet")


def load_manifest(out_dir: str) -> dict[str, Any] | None:
    """The manifest in ``out_dir``, or None when there is none."""
    path = storage.join(out_dir, MANIFEST)
    return storage.read_json(path) if storage.exists(path) else None


def prepared_sources(out_dir: str) -> dict[str, dict[str, str]]:
    """Task -> {source name: shard path}, in the manifest's order (tasks without a source left
    out)."""
    manifest = load_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {out_dir}: run `python -m jobs.prepare` first")
    sources: dict[str, dict[str, str]] = {}
    for name, entry in manifest["sources"].items():
        sources.setdefault(entry["task"], {})[name] = shard_path(out_dir, entry["task"], name)
    return sources


def prepared_shards(out_dir: str) -> dict[str, list[str]]:
    """Task -> its sources' shard paths, from the manifest (tasks without a source left out)."""
    return {task: list(named.values()) for task, named in prepared_sources(out_dir).items()}


def _check_sources(sources: Sequence[SourceConfig]) -> None:
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"data.sources: names must be unique, repeated: {repeated}")
    for source in sources:
        if not source.name or "/" in source.name or "\\" in source.name:
            raise ValueError(f"data.sources: {source.name!r} cannot name a file")
        check_source(source)


def source_inputs(sources: Sequence[SourceConfig], data_root: str) -> dict[str, list[dict]]:
    """Source name -> its input files as ``[{path, sha256}]``, after checking the source list
    (unique names that can name a file, readable formats); reads no record."""
    _check_sources(sources)
    return {
        source.name: [
            {"path": path, "sha256": storage.file_sha256(path)}
            for path in source_files(source, data_root)
        ]
        for source in sources
    }


def _entry(
    source: SourceConfig, result: ReadResult, inputs: list[dict], shard: str
) -> dict[str, Any]:
    entry = {
        "task": source.task,
        "format": source.format,
        "path": source.path,
        "split": source.split,
        "skip": source.skip,
        "limit": source.limit,
        "read": result.read,
        "kept": result.kept,
        "quarantined": len(result.quarantined),
        "bad_fraction": round(bad_fraction(result.read, len(result.quarantined)), 6),
        "reasons": reason_counts(result.quarantined),
        "skipped": result.skipped,
        "inputs": inputs,
        "shard": shard,
    }
    if source.task == "ir":
        for column in ("positives", "negatives"):
            lengths = pc.list_value_length(result.table[column])
            entry[column] = int(pc.sum(lengths).as_py() or 0)
    return entry


def prepare_sources(
    sources: Sequence[SourceConfig],
    data_root: str,
    out_dir: str,
    max_bad_fraction: float,
    inputs: dict[str, list[dict]] | None = None,
) -> dict[str, Any]:
    """Read, validate and write every source; returns the manifest. ``inputs``: the sources'
    :func:`source_inputs` when the caller already has them.

    Raises :class:`BadDataError` (after writing the quarantine file) when a source's
    quarantined/read exceeds ``max_bad_fraction``; no manifest is left behind then.
    """
    inputs = source_inputs(sources, data_root) if inputs is None else inputs
    quarantine_path = storage.join(out_dir, QUARANTINE)
    manifest_path = storage.join(out_dir, MANIFEST)
    storage.remove_file(manifest_path)  # a stale manifest must not outlive a failed re-run
    results = {source.name: read_source(source, data_root) for source in sources}
    write_quarantine(quarantine_path, {name: r.quarantined for name, r in results.items()})
    entries = {
        source.name: _entry(
            source,
            results[source.name],
            inputs[source.name],
            shard_path(out_dir, source.task, source.name),
        )
        for source in sources
    }
    check_bad_fraction(entries, max_bad_fraction, quarantine_path)
    for source in sources:
        storage.write_parquet(entries[source.name]["shard"], results[source.name].table)
    manifest = {
        "prepare_version": PREPARE_VERSION,
        "data_root": data_root,
        "quarantine": quarantine_path,
        "sources": entries,
        "tasks": {
            task: [e["shard"] for e in entries.values() if e["task"] == task]
            for task in TASKS
            if any(e["task"] == task for e in entries.values())
        },
        "totals": {
            key: sum(e[key] for e in entries.values()) for key in ("read", "kept", "quarantined")
        },
    }
    storage.write_json(manifest_path, manifest)
    return storage.read_json(manifest_path)  # as a later, cached call returns it (keys sorted)
