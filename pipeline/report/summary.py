"""The block a finished main job prints last: how long it took, where the report and the model are,
and the registered model's test scores beside the base's.

    ======== run demo: done in 27 min ========
    report        runs/demo/report.md
    final model   runs/demo/final
    registry      registered codiemb-encoder version 1; alias champion set
    benchmark                   base   registered   change
    stsb-test Spearman         82.03        84.50    +2.47
    ...
"""

from __future__ import annotations

from pipeline.progress import format_duration

# the headline metric of each benchmark kind
MAIN_METRIC = {"sts": ("spearman", "Spearman"), "ir": ("ndcg@10", "nDCG@10")}


def run_summary(
    *,
    run_name: str,
    seconds: float,
    report: str,
    final: str,
    registry: str,
    results: dict[str, dict[str, dict[str, float]]],
    registered: str,
    kinds: dict[str, str],
) -> str:
    """The summary block; ``results`` is model -> benchmark -> metric (``eval.json``), ``kinds``
    benchmark -> ``sts`` / ``ir`` in config order, ``registered`` the registered model's name."""
    rows = []
    for bench, kind in kinds.items():
        key, label = MAIN_METRIC[kind]
        base = results.get("base", {}).get(bench, {}).get(key)
        ours = results.get(registered, {}).get(bench, {}).get(key)
        if base is None or ours is None:
            continue
        rows.append(f"{bench + ' ' + label:<26} {base:>7.2f} {ours:>12.2f} {ours - base:>+8.2f}")
    header = f"{'benchmark':<26} {'base':>7} {'registered':>12} {'change':>8}"
    return "\n".join(
        [
            f"======== run {run_name}: done in {format_duration(seconds)} ========",
            f"report        {report}",
            f"final model   {final} ({registered})",
            f"registry      {registry}",
            *([header, *rows] if rows else ["no benchmark scored both the base and the model"]),
        ]
    )
