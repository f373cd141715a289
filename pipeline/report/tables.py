"""Markdown tables of the evaluation results and the sentences that read them.

``results`` maps model name -> benchmark name -> metric -> value (scores x100, geometry raw), as in
``eval.json``. A missing model, benchmark or metric renders as "–"; the best value of each column is bold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from pipeline.config import HELD_OUT_METRICS
from pipeline.eval.paired import paired_difference
from pipeline.eval.table import GEOMETRY

Results = Mapping[str, Mapping[str, Mapping[str, float]]]
QueryScores = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]  # model, bench, query
Better = str  # "max", "min" or "zero" (nearest to 0)

MISSING = "–"
LABELS = {
    "spearman": "Spearman",
    "ndcg@10": "nDCG@10",
    "recall@100": "Recall@100",
    "mrr@10": "MRR@10",
    "map": "MAP",
}
IR_METRICS = ("ndcg@10", "recall@100", "mrr@10")
GEOMETRY_BETTER: dict[str, Better] = {
    "alignment": "min",
    "uniformity": "min",
    "avg_cosine": "zero",
    "effective_rank": "max",
    "svd_entropy": "max",
    "numerical_rank": "max",
    "condition_number": "min",
}
GEOMETRY_NOTE = (
    "Raw values. Bold marks the conventional direction: lowest alignment, uniformity and condition "
    "number, average cosine nearest 0, highest ranks and SVD entropy."
)


def metric(results: Results, model: str, bench: str, name: str) -> float | None:
    """One value, or None when the model, benchmark or metric is missing (or not finite)."""
    value = results.get(model, {}).get(bench, {}).get(name)
    return float(value) if value is not None and math.isfinite(value) else None


def mean(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is missing."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def _score(v: float) -> str:
    return f"{v:.2f}"


def _geometry(v: float) -> str:
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3f}"


def _best(values: Sequence[float | None], better: Better, fmt: Callable[[float], str]) -> set[int]:
    """Rows holding the best value of a column (ties as displayed are all best)."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if not present:
        return set()
    shown = abs if better == "zero" else float
    key = {"max": lambda v: v, "min": lambda v: -v, "zero": lambda v: -abs(v)}[better]
    target = fmt(shown(max((v for _, v in present), key=key)))
    return {i for i, v in present if fmt(shown(v)) == target}


def markdown_table(
    index: str,
    columns: Sequence[tuple[str, Better]],
    rows: Mapping[str, Sequence[float | None]],
    fmt: Callable[[float], str] = _score,
) -> str:
    """A Markdown table: row names, then one cell per column; the best of each column in bold."""
    names = list(rows)
    bold = [
        _best([rows[n][j] for n in names], better, fmt) for j, (_, better) in enumerate(columns)
    ]
    lines = [
        f"| {index} | " + " | ".join(header for header, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for i, name in enumerate(names):
        cells = []
        for j, value in enumerate(rows[name]):
            text = MISSING if value is None else fmt(value)
            cells.append(f"**{text}**" if i in bold[j] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row_name(model: str, chosen: str | None) -> str:
    return f"{model} (registered)" if model == chosen else model


def geometry_table(results: Results, bench: str, *, chosen: str | None = None) -> str:
    """The embedding geometry of every model on one benchmark (only metrics some model has; "" if
    none has any)."""
    names = [g for g in GEOMETRY if any(g in r.get(bench, {}) for r in results.values())]
    if not names:
        return ""
    rows = {_row_name(m, chosen): [metric(results, m, bench, g) for g in names] for m in results}
    columns = [(g, GEOMETRY_BETTER.get(g, "max")) for g in names]
    return markdown_table("model", columns, rows, fmt=_geometry)


def comparison_table(
    results: Results,
    *,
    sts_bench: str = "stsb-test",
    ir_bench: str = "scifact-test",
    chosen: str | None = None,
) -> str:
    """Test scores of every model (STS Spearman, IR nDCG@10 / Recall@100 / MRR@10, the mean of
    Spearman and nDCG@10), then the geometry of each benchmark as a second and third table."""
    columns = [(f"{sts_bench} Spearman", "max")]
    columns += [(f"{ir_bench} {LABELS[m]}", "max") for m in IR_METRICS]
    columns.append(("mean (Spearman, nDCG@10)", "max"))
    rows = {}
    for model in results:
        sts = metric(results, model, sts_bench, "spearman")
        ir = [metric(results, model, ir_bench, m) for m in IR_METRICS]
        rows[_row_name(model, chosen)] = [sts, *ir, mean([sts, ir[0]])]
    parts = [markdown_table("model", columns, rows)]
    for bench in (sts_bench, ir_bench):
        table = geometry_table(results, bench, chosen=chosen)
        if table:
            parts.append(f"Embedding geometry on {bench}:\n\n{table}")
    if len(parts) > 1:
        parts.append(GEOMETRY_NOTE)
    return "\n\n".join(parts)


def _dev_pair(results: Results, model: str, sts_bench: str, ir_bench: str) -> list[float | None]:
    return [
        metric(results, model, sts_bench, "spearman"),
        metric(results, model, ir_bench, "ndcg@10"),
    ]


def chosen_variant(chosen: str, dev_selection: Mapping[str, float]) -> str | None:
    """The key of ``dev_selection`` that is the registered model: the same name once "fused:" is
    dropped, else the best-scoring variant of the same method (``delta(power=2.0)`` for ``fused:delta``)."""
    method = chosen.removeprefix("fused:")
    same = [v for v in dev_selection if v.removeprefix("fused:") == method]
    same = same or [v for v in dev_selection if v.removeprefix("fused:").split("(")[0] == method]
    return max(same, key=dev_selection.get) if same else None


def dev_table(
    results: Results,
    dev_selection: Mapping[str, float],
    *,
    chosen: str | None = None,
    sts_bench: str = "stsb-dev",
    ir_bench: str = "ir-dev",
) -> str:
    """Dev scores of every model (STS Spearman, IR nDCG@10, their mean), then every fusion variant's
    dev objective, best first."""
    columns = [(f"{sts_bench} Spearman", "max"), (f"{ir_bench} nDCG@10", "max"), ("mean", "max")]
    rows = {}
    for model in results:
        pair = _dev_pair(results, model, sts_bench, ir_bench)
        rows[_row_name(model, chosen)] = [*pair, mean(pair)]
    parts = [markdown_table("model", columns, rows)]
    if dev_selection:
        mark = chosen_variant(chosen, dev_selection) if chosen else None
        ranked = sorted(dev_selection, key=lambda v: -dev_selection[v])
        variants = {_row_name(v, mark): [float(dev_selection[v])] for v in ranked}
        parts.append(
            "Fusion selection on dev:\n\n"
            + markdown_table("fusion variant", [("dev objective", "max")], variants)
        )
    return "\n\n".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s"


def stage_table(stage_times: Mapping[str, float]) -> str:
    """Wall time per stage (seconds and minutes) and the total."""
    lines = ["| stage | seconds | time |", "|---|---:|---:|"]
    for stage, seconds in stage_times.items():
        lines.append(f"| {stage} | {seconds:.1f} | {_duration(seconds)} |")
    total = sum(stage_times.values())
    lines.append(f"| **total** | **{total:.1f}** | **{_duration(total)}** |")
    return "\n".join(lines)


def _label(bench: str, name: str) -> str:
    return f"{bench} {LABELS.get(name, name)}"


def _compare(
    results: Results, model: str, ref: str, bench: str, name: str
) -> tuple[float, float, float] | str:
    """(model's value, ref's value, their difference rounded to the 0.01 shown), or a sentence saying
    which is missing."""
    a, b = metric(results, model, bench, name), metric(results, ref, bench, name)
    if a is None or b is None:
        missing = " and ".join(m for m, v in ((model, a), (ref, b)) if v is None)
        return f"{model} vs {ref} on {_label(bench, name)}: not measured ({missing} missing)."
    return a, b, round(a - b, 2)


def _within(results: Results, model: str, ref: str, bench: str, name: str, tol: float) -> str:
    compared = _compare(results, model, ref, bench, name)
    if isinstance(compared, str):
        return compared
    a, b, diff = compared
    if diff >= -tol:
        within, verdict = "within", "no negative transfer"
    else:
        within, verdict = "not within", f"negative transfer of {-diff:.2f} points"
    return (
        f"{model} is {within} {tol:g} of {ref} on {_label(bench, name)}: "
        f"{a:.2f} vs {b:.2f} ({diff:+.2f}), {verdict}."
    )


def _versus(results: Results, model: str, ref: str, bench: str, name: str) -> str:
    compared = _compare(results, model, ref, bench, name)
    if isinstance(compared, str):
        return compared
    a, b, diff = compared
    verb = "loses to" if diff < 0 else "does not lose to"
    tail = "" if diff < 0 else ", it is ahead" if diff > 0 else ", a tie"
    return f"{model} {verb} {ref} on {_label(bench, name)}: {a:.2f} vs {b:.2f} ({diff:+.2f}){tail}."


def no_negative_transfer(
    results: Results,
    *,
    sts_bench: str = "stsb-test",
    ir_bench: str = "scifact-test",
    tolerance: float = 0.3,
) -> list[str]:
    """Sentences computed from the numbers: ``joint`` against ``sts_only`` on STS and ``ir_only`` on IR
    (within ``tolerance`` points or not), then ``mixed`` against ``joint`` on each test metric."""
    lines = [
        _within(results, "joint", "sts_only", sts_bench, "spearman", tolerance),
        _within(results, "joint", "ir_only", ir_bench, "ndcg@10", tolerance),
    ]
    pairs = [(sts_bench, "spearman")] + [(ir_bench, m) for m in IR_METRICS]
    lines += [_versus(results, "mixed", "joint", bench, name) for bench, name in pairs]
    return lines


def held_out_table(results: Results, held_out: Mapping[str, str], *, chosen: str | None) -> str:
    """Every model's ``HELD_OUT_METRICS`` (STS Spearman; IR nDCG@10, MAP, MRR@10) on each benchmark of
    ``held_out`` (name -> kind), each followed by the model's difference to the base in points."""
    judged = [(bench, name) for bench, kind in held_out.items() for name in HELD_OUT_METRICS[kind]]
    columns = []
    for bench, name in judged:
        columns += [(_label(bench, name), "max"), ("vs base", "max")]
    rows = {}
    for model in results:
        cells: list[float | None] = []
        for bench, name in judged:
            value = metric(results, model, bench, name)
            base = metric(results, "base", bench, name)
            cells += [value, None if value is None or base is None else value - base]
        rows[_row_name(model, chosen)] = cells
    return markdown_table("model", columns, rows)


def held_out_check(
    results: Results,
    held_out: Mapping[str, str],
    *,
    chosen: str,
    tolerance: float = 1.0,
    queries: QueryScores | None = None,
) -> list[str]:
    """Sentences computed from the numbers: the registered model against the base on each metric of
    ``HELD_OUT_METRICS`` of each held-out benchmark, at most ``tolerance`` points lower or not. With
    ``queries`` (model -> benchmark -> query id -> metrics, ``eval/held_out_queries.json``) each
    retrieval sentence adds the paired test of the per-query differences (how much is noise)."""
    lines = []
    for bench, kind in held_out.items():
        for name in HELD_OUT_METRICS[kind]:
            compared = _compare(results, chosen, "base", bench, name)
            if isinstance(compared, str):
                lines.append(compared)
                continue
            a, b, diff = compared
            verdict = (
                f"within {tolerance:g} point(s)"
                if diff >= -tolerance
                else f"more than {tolerance:g} below"
            )
            lines.append(
                f"{chosen} vs base on {_label(bench, name)}: {a:.2f} vs {b:.2f} ({diff:+.2f}), "
                f"{verdict}{_paired_note(queries or {}, chosen, bench, name)}."
            )
    return lines


def _paired_note(queries: QueryScores, model: str, bench: str, name: str) -> str:
    """``"; per query: 95% CI ..."`` of ``model`` − base on ``bench``'s ``name``, or "" unmeasured."""
    mine, base = queries.get(model, {}).get(bench), queries.get("base", {}).get(bench)
    if not mine or not base or set(mine) != set(base) or len(base) < 2:
        return ""
    qids = sorted(base)
    test = paired_difference([mine[q][name] for q in qids], [base[q][name] for q in qids])
    return (
        f"; per query: 95% CI {test.low:+.2f} to {test.high:+.2f}, p = {test.p:.2f} "
        f"({test.won} won, {test.lost} lost, {test.tied} tied of {len(qids)})"
    )


def selection_summary(
    results: Results,
    chosen: str,
    dev_selection: Mapping[str, float],
    *,
    sts_bench: str = "stsb-dev",
    ir_bench: str = "ir-dev",
) -> list[str]:
    """Why ``chosen`` was registered, computed from the dev numbers: its rank among the fusion variants
    and its mean dev score against every single checkpoint (models other than base and ``fused:*``)."""
    lines = [f"Registered model: **{chosen}**."]
    own = chosen_variant(chosen, dev_selection)
    if own is not None:
        best = max(dev_selection, key=dev_selection.get)
        if dev_selection[own] >= dev_selection[best]:
            lines.append(
                f"Its dev objective {dev_selection[own]:.2f} ({own}) is the best of the "
                f"{len(dev_selection)} models scored on dev (fusion variants and candidates)."
            )
        else:
            lines.append(
                f"Its dev objective is {dev_selection[own]:.2f} ({own}); the best on dev was "
                f"{best} ({dev_selection[best]:.2f})."
            )
    elif dev_selection:
        lines.append("It was not among the fusion variants scored on dev.")
    means = {m: mean(_dev_pair(results, m, sts_bench, ir_bench)) for m in results}
    singles = {
        m: v
        for m, v in means.items()
        if v is not None and m not in ("base", chosen) and not m.startswith("fused:")
    }
    if means.get(chosen) is None or not singles:
        return lines
    top = max(singles, key=singles.get)
    above = "above" if means[chosen] > singles[top] else "not above"
    lines.append(
        f"On the mean of {sts_bench} Spearman and {ir_bench} nDCG@10 it scores {means[chosen]:.2f}, "
        f"{above} every single checkpoint (best of them: {top}, {singles[top]:.2f})."
    )
    return lines
