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


DEV_CURVE_METRICS = {"dev_sts_spearman": "STS dev Spearman", "dev_ir_ndcg@10": "IR dev nDCG@10"}


def dev_curves(metrics_paths: dict[str, str]) -> dict[str, list[dict]]:
    """Per mode, the rows of its evaluation steps: ``{"step", "dev_sts_spearman", ...}``."""
    return {
        mode: [
            {"step": row["step"], **{k: row[k] for k in DEV_CURVE_METRICS if k in row}}
            for row in read_metrics(path)
            if any(k in row for k in DEV_CURVE_METRICS)
        ]
        for mode, path in metrics_paths.items()
    }


def plot_dev_curves(metrics_paths: dict[str, str], out_path: str) -> None:
    """One panel per dev metric, one line per mode against the optimizer step; a PNG at ``out_path``."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = dev_curves(metrics_paths)
    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(DEV_CURVE_METRICS.items()):
        ax = fig.add_subplot(1, len(DEV_CURVE_METRICS), i + 1)
        for mode, rows in curves.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=mode)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{label} (x100)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Dev metrics during training (in-loop evaluation)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    storage.write_bytes(out_path, buffer.getvalue())


def dev_only_note(modes: list[str], scored_on_test: bool) -> list[str]:
    """The report's note naming the trained modes scored on dev only (``eval.trained_models``)."""
    if scored_on_test or not modes:
        return []
    return [
        f"Scored on dev only (`eval.trained_models: false`): {', '.join(modes)}; the dev scores of "
        "their checkpoints are in the fusion selection table."
    ]
