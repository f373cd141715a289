"""Markdown tables of evaluation results: scores (x100) and embedding geometry, one row per benchmark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

GEOMETRY = (
    "alignment",
    "uniformity",
    "avg_cosine",
    "effective_rank",
    "svd_entropy",
    "numerical_rank",
    "condition_number",
)


def markdown_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str],
    digits: int = 2,
    index_name: str = "benchmark",
) -> str:
    """A Markdown table: first column the row names, then ``columns`` (blank where a row lacks one)."""
    lines = [
        f"| {index_name} | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in rows.items():
        cells = [f"{values[c]:.{digits}f}" if c in values else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_markdown(results: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """Two tables: the scores (x100, in first-seen metric order) and the geometry (raw values)."""
    scores: list[str] = []
    for values in results.values():
        scores += [m for m in values if m not in GEOMETRY and m not in scores]
    geometry = [m for m in GEOMETRY if any(m in values for values in results.values())]
    parts = [f"# {title}\n" if title else ""]
    parts.append("## Scores (x100)\n\n" + markdown_table(results, scores) + "\n")
    parts.append("## Embedding geometry\n\n" + markdown_table(results, geometry, digits=3) + "\n")
    return "\n".join(p for p in parts if p)
