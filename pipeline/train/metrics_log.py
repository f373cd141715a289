"""A Ray Train callback (runs in the controller) that keeps every reported step in ``metrics.jsonl``:
rank 0's metrics plus the loss averaged over workers, and every worker's peak RSS and real tokens
encoded (a step lasts as long as its busiest worker). Ray Train V2 keeps only checkpoint metrics."""

from __future__ import annotations

import json
import math
import os
import time

import ray.train

from pipeline import storage


class MetricsLog(ray.train.UserCallback):
    """Keep one row per reported step in ``path``. On a local disk each report appends its line.
    An object store cannot append, so there the rows are buffered and the file is written whole at
    every checkpoint, at the last step, after a worker error, and otherwise at most every
    ``flush_every_s`` seconds: the uploads are bounded, and the file always holds every step up to
    the latest checkpoint, which is where a restarted run continues. A run that goes back to a
    checkpoint (a resumed job, a restarted worker group) reports the steps after it again: the rows
    from its first step on are dropped first, so no step appears twice."""

    def __init__(self, path: str, flush_every_s: float = 30.0) -> None:
        self.path = path
        self.local = storage.local_path(path)  # None on object stores
        self.flush_every_s = flush_every_s
        self.rows: list[dict] = []
        if storage.exists(path):  # a resumed run continues the log of the interrupted one
            text = storage.read_bytes(path).decode()
            self.rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.unwritten = False  # rows the object store does not have yet
        self.written_at = time.monotonic()

    def after_report(self, run_context, metrics, checkpoint) -> None:
        row = dict(metrics[0])
        losses = [m["loss"] for m in metrics if "loss" in m]
        if losses:
            row["loss_mean_workers"] = sum(losses) / len(losses)
        for key in ("peak_rss_mb", "tokens"):  # per worker: memory, and how evenly work split
            values = [m[key] for m in metrics if key in m]
            if values:
                row[f"{key}_workers"] = values
        if checkpoint is not None:
            row["checkpoint"] = storage.uri_of(checkpoint.filesystem, checkpoint.path)
        rewound = bool(self.rows) and row["step"] <= self.rows[-1]["step"]
        if rewound:
            self.rows = [r for r in self.rows if r["step"] < row["step"]]
        self.rows.append(row)
        if self.local is None:
            self.unwritten = True
            last_step = row["step"] >= row.get("total_steps", math.inf)
            due = time.monotonic() - self.written_at >= self.flush_every_s
            if checkpoint is not None or last_step or due:
                self._write_all()
        elif rewound:
            self._write_all()
        else:
            os.makedirs(os.path.dirname(self.local), exist_ok=True)
            with open(self.local, "ab") as handle:  # one write of one line
                handle.write(_line(row))

    def after_exception(self, run_context, worker_exceptions) -> None:
        if self.unwritten:  # keep what the failed attempt reported
            self._write_all()

    def _write_all(self) -> None:
        storage.write_bytes(self.path, b"".join(_line(r) for r in self.rows))
        self.unwritten = False
        self.written_at = time.monotonic()


def _line(row: dict) -> bytes:
    return (json.dumps(row, default=float) + "\n").encode()
