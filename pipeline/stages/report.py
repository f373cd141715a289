"""The report stage: ``<run dir>/report.md`` (the comparison tables, negative-transfer sentences, the
held-out check), ``tradeoff.png`` (IR vs STS) and ``dev_curves.png`` (dev metrics against steps, one
line per mode). Not cached: it records this run's stage times and registration."""

from __future__ import annotations

from pipeline import storage
from pipeline.config import Config, objective_benchmarks
from pipeline.report import write_report
from pipeline.report.training import dev_only_note, plot_dev_curves, training_notes
from pipeline.stages.evaluate import held_out_queries_path


def run(
    cfg: Config,
    results: dict,
    *,
    chosen: str,
    dev_selection: dict[str, float],
    trained: dict[str, dict],
    stage_times: dict[str, float],
    registered: str,
) -> dict[str, str]:
    """Write the report of ``results`` (eval.json) with the chosen model's name, the dev scores of
    every model the fuse stage scored, the trained modes' records, the stage times and the
    registration message; returns the written files by kind."""
    metrics = {m: d["metrics"] for m, d in trained.items()}
    paths = write_report(
        cfg.run.dir,
        results,
        chosen=chosen,
        dev_selection=dev_selection,
        stage_times=stage_times,
        notes=[
            *training_notes(metrics),
            *dev_only_note(list(trained), cfg.eval.trained_models),
            f"Registered: {registered}.",
        ],
        title=f"CoDiEmb on Ray — run {cfg.run.name}",
        held_out={b.name: b.kind for b in cfg.eval.benchmarks if b.held_out},
        held_out_tolerance=cfg.eval.held_out_tolerance,
        held_out_queries=_held_out_queries(cfg.run.dir),
        objective_dev={
            b.name: b.kind
            for b in cfg.eval.benchmarks
            if b.name in objective_benchmarks(cfg.train.objective)
        },
    )
    paths["dev_curves"] = storage.join(cfg.run.dir, "dev_curves.png")
    plot_dev_curves(metrics, paths["dev_curves"])
    return paths


def _held_out_queries(run_dir: str) -> dict:
    """The evaluate stage's per-query held-out scores, or {} when this run has none."""
    path = held_out_queries_path(run_dir)
    return storage.read_json(path) if storage.exists(path) else {}
