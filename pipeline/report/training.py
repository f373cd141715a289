"""What each training run did, from its ``metrics.jsonl``: steps per task, wall time, final dev."""

from __future__ import annotations

import json
from collections import Counter

from pipeline import storage


def read_metrics(path: str) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (one reported step each)."""
    text = storage.read_bytes(path).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_notes(metrics_paths: dict[str, str]) -> list[str]:
    """One sentence per mode: its optimizer steps per task, summed step time and last dev scores."""
    notes = []
    for mode, path in metrics_paths.items():
        rows = read_metrics(path)
        steps = Counter(row["task"] for row in rows)
        seconds = sum(row.get("step_seconds", 0.0) for row in rows)
        dev = next((row for row in reversed(rows) if "dev_mean" in row), {})
        scores = ", ".join(
            f"{k} {dev[k]:.2f}" for k in ("dev_sts_spearman", "dev_ir_ndcg@10") if k in dev
        )
        counts = " + ".join(f"{n} {task}" for task, n in sorted(steps.items()))
        notes.append(
            f"Training `{mode}`: {counts} steps, {seconds / 60:.1f} min of step time"
            + (f"; final dev (in-loop, BM25 pool) {scores}" if scores else "")
            + "."
        )
    return notes
