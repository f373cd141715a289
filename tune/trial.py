"""One trial of a sweep: a Tune driver function that builds the mode's ``TorchTrainer`` (Ray Train V2's
Tune pattern) and forwards the dev reports to Tune, plus the MLflow callback the Tuner logs with."""

from __future__ import annotations

from typing import Any

import ray.tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.integration.ray_train import TuneReportCallback

from pipeline import storage
from pipeline.config import Config, with_overrides
from pipeline.ray_compat import exit_when_tune_stops_trial
from pipeline.stages.train import base_model
from pipeline.tracking.mlflow_run import metric_name
from pipeline.train.driver import build_trainer

OBJECTIVE = "dev_objective"  # what Tune ranks and ASHA stops on (see ``train.objective``)


class DevReportsToTune(TuneReportCallback):
    """Forward to Tune only the reports that carry the dev objective (the eval steps, each with its
    checkpoint path): Tune requires its metric in every result, and ASHA compares trials by it."""

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if OBJECTIVE in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


class SweepMLflowCallback(MLflowLoggerCallback):
    """Tune's MLflow logger with metric names MLflow accepts (``dev_ir_ndcg@10`` -> ``dev_ir_ndcg_10``)
    and only numeric values."""

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        clean = {
            metric_name(key): value
            for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        clean["training_iteration"] = result["training_iteration"]
        super().log_trial_result(iteration, trial, clean)


def trial_paths(sweep_dir: str, trial_id: str) -> dict[str, str]:
    """Where a trial's Ray Train run and its step log live."""
    return {
        "storage": storage.join(sweep_dir, "train"),
        "metrics": storage.join(sweep_dir, "trials", trial_id, "metrics.jsonl"),
    }


def run_trial(params: dict[str, Any], *, base: Config, sweep_dir: str) -> None:
    """Train ``tune.mode`` with ``params`` (dotted config keys) applied to ``base``. The Train run is
    named by the trial id, so a trial resumed after a driver restart resumes its Train run."""
    cfg = with_overrides(base, params)
    trial_id = ray.tune.get_context().get_trial_id()
    paths = trial_paths(sweep_dir, trial_id)
    trainer = build_trainer(
        cfg,
        cfg.tune.mode,
        base_model=base_model(cfg),
        name=trial_id,
        storage_path=paths["storage"],
        metrics_path=paths["metrics"],
        callbacks=[DevReportsToTune()],
    )
    with exit_when_tune_stops_trial(trial_id):
        trainer.fit()
