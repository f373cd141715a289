"""A Ray Tune sweep over the CoDiEmb knobs, then fusion of the best trials and the sweep report.

    python -m tune.sweep --config configs/reproduce.yaml tune.num_samples=8 train.max_steps=60 train.eval_every=20
    python -m tune.sweep --config configs/smoke.yaml tune.search=optuna      (needs the optuna extra)

prepare -> mine (cached, shared with jobs.pipeline) -> Tuner over ``tune.space`` (each trial a
TorchTrainer of ``tune.mode``, ASHA on the dev objective, every trial an MLflow run nested under the
sweep's run) -> ``best.json`` (the best ``tune.best_k`` trials; ``fusion.candidates=tune_best_k`` in
jobs.pipeline reads it) -> fusion of those trials, chosen on dev -> ``sweep.md`` + ``pareto.png``.
Run it again with the same ``tune.name`` after the driver died and it resumes the sweep.
"""

from __future__ import annotations

import math

import ray

from pipeline import storage
from pipeline.cli import run_main
from pipeline.config import DEV_BENCHMARK_PREFIX, Config, ConfigError, with_absolute_paths
from pipeline.stages import fuse, prepare_and_mine, train
from pipeline.tracking import (
    TrackingUnavailable,
    log_artifact,
    log_metrics,
    pipeline_run,
    resolve_tracking_uri,
    tracking_or_offline,
)
from tune.report import write_sweep_report
from tune.runner import best_trials, build_tuner, sweep_dir, trial_rows


class SweepFailed(RuntimeError):
    """Every trial failed; the message lists them (their error files are in the Tune experiment)."""


def fuse_best(cfg: Config, folder: str, best: list) -> dict | None:
    """Fuse the best trials' checkpoints (methods of ``fusion``, chosen on dev) and score the chosen
    model on dev; ``None`` with fewer than two trials."""
    if len(best) < 2:
        return None
    candidates = {f"tune:{row.trial_id}": row.checkpoint for row in best}
    selection, fused_folder = fuse.run(
        cfg, train.base_model(cfg), candidates, out=storage.join(folder, "fuse")
    )
    dev = fuse.dev_scores(cfg, fused_folder)
    return {
        "name": f"fused:{selection['best']}",
        "folder": fused_folder,
        "of": list(candidates),
        "dev_sts": dev.get("dev_sts_spearman", float("nan")),
        "dev_ir": dev.get("dev_ir_ndcg@10", float("nan")),
        "extra": {k: v for k, v in dev.items() if k.startswith(DEV_BENCHMARK_PREFIX)},
        "objective": dev["dev_objective"],
    }


def main(cfg: Config) -> dict:
    if cfg.tune.asha and cfg.train.eval_every == 0:
        raise ConfigError("tune.asha=true compares trials at eval steps: set train.eval_every > 0")
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.dir)
    uri = tracking_or_offline(uri, cfg)  # fail fast, or track offline (tracking.required)
    cfg = with_absolute_paths(cfg)  # trials run in their own working directories
    ray.init(ignore_reinit_error=True)
    prepare_and_mine(cfg)
    folder = sweep_dir(cfg)
    name = f"{cfg.run.name}-sweep-{cfg.tune.name}"
    with pipeline_run(uri, cfg.tracking.experiment, name, cfg.model_dump(mode="json")) as parent:
        tuner = build_tuner(cfg, folder, tracking_uri=uri, parent_run_id=parent.info.run_id)
        rows = trial_rows(tuner.fit(), cfg)
        if all(math.isnan(r.objective) for r in rows):
            raise SweepFailed(
                f"no trial of {folder} reported a dev score: "
                + "; ".join(f"{r.trial_id} {r.status}" for r in rows)
            )
        best = best_trials(rows, cfg.tune.best_k)
        fused = fuse_best(cfg, folder, best)
        paths = write_sweep_report(folder, rows, best, fused, title=f"Sweep {name}")
        for path in paths.values():
            log_artifact(path, "sweep")
        baseline = next((r for r in rows if r.baseline), None)
        scores = {
            "best_trial_objective": best[0].objective if best else None,
            "baseline_objective": baseline.objective if baseline else None,
            "fused_objective": fused["objective"] if fused else None,
        }
        log_metrics({k: v for k, v in scores.items() if v is not None and v == v})
    print(f"[tune] {len(rows)} trials; report: {paths['report']}")
    return {"rows": rows, "best": best, "fused": fused, "paths": paths}


if __name__ == "__main__":
    run_main(main, description=__doc__, known=(TrackingUnavailable, SweepFailed))
