"""Write the run's ``report.md`` and ``tradeoff.png`` into the run directory (local path or URI)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline import storage
from pipeline.report.tables import (
    QueryScores,
    Results,
    comparison_table,
    dev_table,
    held_out_check,
    held_out_table,
    no_negative_transfer,
    selection_summary,
    stage_table,
)
from pipeline.report.tradeoff import pareto_front, plot_tradeoff, tradeoff_points

REPORT, PLOT = "report.md", "tradeoff.png"


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _transfer_section(results, sts_bench: str, ir_bench: str) -> str:
    """The negative-transfer sentences, or one line when the run scored none of the pairs on test."""
    lines = no_negative_transfer(results, sts_bench=sts_bench, ir_bench=ir_bench)
    if all("not measured" in line for line in lines):
        return (
            "Not measured in this run: it needs `joint` beside `sts_only`, `ir_only` and `mixed` "
            "on test (`make reproduce` trains and scores them)."
        )
    return _bullets(lines)


def render_report(
    results: Results,
    *,
    chosen: str,
    dev_selection: Mapping[str, float],
    stage_times: Mapping[str, float],
    notes: Sequence[str],
    title: str,
    sts_bench: str = "stsb-test",
    ir_bench: str = "scifact-test",
    sts_dev: str = "stsb-dev",
    ir_dev: str = "ir-dev",
    held_out: Mapping[str, str] | None = None,
    held_out_tolerance: float = 1.0,
    held_out_queries: QueryScores | None = None,
    objective_dev: Mapping[str, str] | None = None,
) -> str:
    """The Markdown text of the report; ``held_out`` maps each held-out benchmark to its kind,
    ``objective_dev`` each extra dev benchmark of the objective (``dev:<name>``) to its kind."""
    points = tradeoff_points(results, sts_bench=sts_bench, ir_bench=ir_bench)
    front = ", ".join(pareto_front(points)) or "–"
    dev = dict(sts_bench=sts_dev, ir_bench=ir_dev)
    sections = [
        f"# {title}",
        "## Registered model\n\n"
        + _bullets(selection_summary(results, chosen, dev_selection, **dev)),
        "## Test scores (x100)\n\n"
        + comparison_table(results, sts_bench=sts_bench, ir_bench=ir_bench, chosen=chosen),
        f"## IR vs STS trade-off\n\n![IR vs STS trade-off]({PLOT})\n\nPareto front "
        f"({sts_bench} Spearman, {ir_bench} nDCG@10): {front}.",
        "## Negative transfer check\n\n" + _transfer_section(results, sts_bench, ir_bench),
        "## Dev scores and fusion selection\n\n"
        + dev_table(results, dev_selection, chosen=chosen, **dev),
    ]
    if held_out:
        check = held_out_check(
            results,
            held_out,
            chosen=chosen,
            tolerance=held_out_tolerance,
            queries=held_out_queries,
        )
        sections.append(
            "## Held-out benchmarks (never trained or selected on)\n\n"
            + held_out_table(results, held_out, chosen=chosen)
            + "\n\n"
            + _bullets(check)
        )
    if objective_dev:
        sections.append(
            "## Extra dev benchmarks of the objective (selection sees them: not held out)\n\n"
            + held_out_table(results, objective_dev, chosen=chosen)
        )
    if notes:
        sections.append("## Notes\n\n" + _bullets(notes))
    sections.append("## Wall time per stage\n\n" + stage_table(stage_times))
    return "\n\n".join(sections) + "\n"


def write_report(
    out_dir: str,
    results: Results,
    *,
    chosen: str,
    dev_selection: Mapping[str, float],
    stage_times: Mapping[str, float],
    notes: Sequence[str],
    title: str = "CoDiEmb on Ray: report",
    sts_bench: str = "stsb-test",
    ir_bench: str = "scifact-test",
    sts_dev: str = "stsb-dev",
    ir_dev: str = "ir-dev",
    held_out: Mapping[str, str] | None = None,
    held_out_tolerance: float = 1.0,
    held_out_queries: QueryScores | None = None,
    objective_dev: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write ``report.md`` and ``tradeoff.png`` under ``out_dir``; return {"report", "tradeoff"} paths."""
    paths = {
        "report": storage.join(out_dir, REPORT),
        "tradeoff": storage.join(out_dir, PLOT),
    }
    benches = dict(sts_bench=sts_bench, ir_bench=ir_bench)
    plot_tradeoff(results, paths["tradeoff"], chosen=chosen, **benches)
    text = render_report(
        results,
        chosen=chosen,
        dev_selection=dev_selection,
        stage_times=stage_times,
        notes=notes,
        title=title,
        sts_dev=sts_dev,
        ir_dev=ir_dev,
        held_out=held_out,
        held_out_tolerance=held_out_tolerance,
        held_out_queries=held_out_queries,
        objective_dev=objective_dev,
        **benches,
    )
    storage.write_bytes(paths["report"], text.encode("utf-8"))
    return paths
