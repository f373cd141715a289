"""Stage bookkeeping for the end-to-end job: one line per stage with its elapsed time, and outputs
skipped when a ``done.json`` beside them records the same input hash."""

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


def cached(out_dir: str, digest: str) -> dict | None:
    """The record of a finished stage whose inputs hashed to ``digest``, else None."""
    path = storage.join(out_dir, DONE)
    if not storage.exists(path):
        return None
    record = storage.read_json(path)
    return record if record.get("input_hash") == digest else None


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
