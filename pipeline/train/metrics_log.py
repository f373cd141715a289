"""A Ray Train callback (runs in the controller) that keeps every reported step in ``metrics.jsonl``:
rank 0's metrics plus the loss averaged over workers, and every worker's peak RSS and real tokens
encoded (a step lasts as long as its busiest worker). Ray Train V2 keeps only checkpoint metrics."""

from __future__ import annotations

import json

import ray.train

from pipeline import storage


class MetricsLog(ray.train.UserCallback):
    """Append every report to ``path`` (rewritten whole, so it works on object stores too)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: list[dict] = []
        if storage.exists(path):  # a resumed run continues the log of the interrupted one
            text = storage.read_bytes(path).decode()
            self.rows = [json.loads(line) for line in text.splitlines() if line.strip()]

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
            row["checkpoint"] = checkpoint.path
        step = row.get("step")
        self.rows = [r for r in self.rows if r.get("step") != step] + [row]
        body = "".join(json.dumps(r, default=float) + "\n" for r in self.rows)
        storage.write_bytes(self.path, body.encode())
