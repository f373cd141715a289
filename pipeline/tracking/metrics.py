"""Per-step training metrics (rank 0's, from a run's ``metrics.jsonl``) into the active MLflow run."""

from __future__ import annotations

import json
import math

from pipeline import storage
from pipeline.tracking.mlflow_run import log_metrics

# the step is MLflow's x axis; checkpoint_rank is Ray Train's ranking key (a copy of the dev
# metric, or a sentinel for checkpoints without one), not a measurement
NOT_LOGGED = {"step", "checkpoint_rank"}


def log_training_metrics(metrics_path: str, *, prefix: str = "") -> int:
    """Log every numeric metric of every step as ``<prefix><name>``; returns the steps logged."""
    text = storage.read_bytes(metrics_path).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for row in rows:
        numeric = {
            f"{prefix}{k}": float(v)
            for k, v in row.items()
            if isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and k not in NOT_LOGGED
        }
        log_metrics(numeric, step=int(row["step"]))
    return len(rows)
