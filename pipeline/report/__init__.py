"""The run's report: comparison tables, computed no-negative-transfer statements, the IR-vs-STS plot.

    from pipeline.report import write_report
    paths = write_report(run_dir, results, chosen="fused:delta", dev_selection=..., stage_times=...,
                         notes=[...], title="CoDiEmb demo")   # {"report": .../report.md, "tradeoff": ...png}

matplotlib is imported only when the plot is drawn.
"""

from pipeline.report.tables import (
    comparison_table,
    dev_table,
    held_out_check,
    no_negative_transfer,
    stage_table,
)
from pipeline.report.tradeoff import pareto_front, plot_tradeoff
from pipeline.report.write import render_report, write_report

__all__ = [
    "comparison_table",
    "dev_table",
    "held_out_check",
    "no_negative_transfer",
    "pareto_front",
    "plot_tradeoff",
    "render_report",
    "stage_table",
    "write_report",
]
