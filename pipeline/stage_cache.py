"""Stage bookkeeping, one scheme for every stage of ``pipeline.stages``: a stage's outputs are reused
when the ``done.json`` in its output folder records the same input hash (and every file it lists
under ``outputs`` still exists); one console line per stage with its elapsed time."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline import storage

DONE = "done.json"


def input_hash(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (config sections, upstream hashes, file digests)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_file_sha256(folder: str) -> str:
    """The sha256 of a model folder's ``model.safetensors`` file (its bytes, not its tensors: see
    ``pipeline.fusion.stream.weights_digest`` for those): the key of the stages that read a model."""
    return storage.file_sha256(storage.join(folder, "model.safetensors"))


def cached(out_dir: str, digest: str) -> dict | None:
    """The record of a finished stage whose inputs hashed to ``digest`` and whose listed
    ``outputs`` all exist, else None."""
    path = storage.join(out_dir, DONE)
    if not storage.exists(path):
        return None
    record = storage.read_json(path)
    if record.get("input_hash") != digest:
        return None
    return record if all(map(storage.exists, record.get("outputs", []))) else None


def recorded_hash(out_dir: str, missing: str) -> str:
    """The input hash a finished stage recorded in ``out_dir`` (what a later stage's key builds on);
    ``FileNotFoundError`` with ``missing`` (what to run first) when it has not finished."""
    path = storage.join(out_dir, DONE)
    if not storage.exists(path):
        raise FileNotFoundError(f"no {DONE} in {out_dir}: {missing}")
    return storage.read_json(path)["input_hash"]


def mark_done(out_dir: str, digest: str, **record: Any) -> dict:
    """Record that the stage writing ``out_dir`` finished for inputs ``digest``."""
    record = {"input_hash": digest, **record}
    storage.write_json(storage.join(out_dir, DONE), record)
    return record


class StageClock:
    """Times stages and prints one line per stage; ``times`` feeds the report."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"[pipeline] {name} ...", flush=True)
        started = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - started
        print(f"[pipeline] {name} done in {self.times[name]:.1f} s", flush=True)
