"""Build (or restore) the Tuner of a sweep, run it, and read its trials back as table rows.

The Tune experiment lives in ``<sweep dir>/tuner``; a driver killed mid-sweep and started again with
the same ``tune.name`` restores it (``Tuner.restore``): finished trials keep their results, unfinished
ones resume their Ray Train runs from their latest checkpoints.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from pipeline import storage
from pipeline.config import DEV_BENCHMARK_PREFIX, Config
from pipeline.train.driver import check_data_headroom
from tune.space import baseline_params, param_space, searcher
from tune.trial import OBJECTIVE, SweepMLflowCallback, run_trial

RESOURCES_OF_DRIVER = {"CPU": 0.01}  # the trial's driver function only waits on its TorchTrainer


def sweep_dir(cfg: Config) -> str:
    """``<run dir>/tune/<tune.name>``: the Tune experiment, the trials' Train runs and the report."""
    return storage.join(storage.absolute(cfg.run.dir), "tune", cfg.tune.name)


def scheduler(cfg: Config) -> ASHAScheduler | None:
    """ASHA on the step count: rungs every ``grace_steps * reduction_factor**k`` steps."""
    if not cfg.tune.asha:
        return None
    return ASHAScheduler(
        time_attr="step",
        max_t=cfg.train.max_steps or 10**9,
        grace_period=cfg.tune.grace_steps or cfg.train.eval_every,
        reduction_factor=cfg.tune.reduction_factor,
    )


def build_tuner(cfg: Config, folder: str, *, tracking_uri: str, parent_run_id: str) -> tune.Tuner:
    """A new Tuner for the sweep, or the interrupted one at ``folder`` restored."""
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg, sweep_dir=folder), RESOURCES_OF_DRIVER
    )
    check_data_headroom(
        cfg,
        ray.cluster_resources().get("CPU", 0.0),
        cfg.tune.max_concurrent_trials,
        RESOURCES_OF_DRIVER["CPU"],
    )
    path = storage.join(folder, "tuner")
    if tune.Tuner.can_restore(path):
        print(f"[tune] restoring the interrupted sweep at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="max",
            search_alg=searcher(cfg),
            scheduler=scheduler(cfg),
            num_samples=cfg.tune.num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name="tuner",
            storage_path=folder,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.trial_max_failures),
            callbacks=[
                SweepMLflowCallback(
                    tracking_uri=tracking_uri,
                    experiment_name=cfg.tracking.experiment,
                    tags={"mlflow.parentRunId": parent_run_id, "codiemb.sweep": cfg.tune.name},
                )
            ],
        ),
    )


@dataclass
class TrialRow:
    """One trial of a sweep, at its best dev report."""

    trial_id: str
    params: dict[str, Any]
    status: str  # complete | stopped at step N (ASHA) | error: ...
    steps: int  # steps trained
    total_steps: int  # the trial's budget
    best_step: int = 0
    dev_sts: float = math.nan
    dev_ir: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)  # ``dev:<benchmark>`` of the objective
    objective: float = math.nan
    checkpoint: str = ""  # the Ray Train checkpoint of the best report
    baseline: bool = False  # the config's own values (the first trial)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _checkpoint_uri(result: tune.Result, path: Any) -> str:
    """A checkpoint path as Tune reports it (Ray's ``Checkpoint.path``, inside its filesystem:
    ``bucket/...`` for ``s3://bucket/...``) as a URI ``pipeline.storage`` opens. The trial's Train
    run lies under the sweep folder, on the result's filesystem."""
    if not isinstance(path, str) or not path:  # a report without one (NaN in the dataframe)
        return ""
    return storage.uri_of(result.filesystem, path)


def trial_rows(results, cfg: Config) -> list[TrialRow]:
    """The trials of a finished ``ResultGrid``, baseline first, then by objective (best first)."""
    baseline = baseline_params(cfg)
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        reports = [] if frame is None else frame.to_dict("records")
        last = reports[-1] if reports else {}
        params = {key: result.config.get(key) for key in baseline}
        row = TrialRow(
            trial_id=str(last.get("trial_id", os.path.basename(result.path))),
            params=params,
            status="",
            steps=int(last.get("step", 0)),
            total_steps=int(last.get("total_steps", 0)),
            baseline=params == baseline,
        )
        if reports:
            best = max(reports, key=lambda r: r.get(OBJECTIVE, -math.inf))
            row.best_step = int(best["step"])
            row.dev_sts = float(best.get("dev_sts_spearman", math.nan))
            row.dev_ir = float(best.get("dev_ir_ndcg@10", math.nan))
            row.extra = {
                key: float(value)
                for key, value in best.items()
                if key.startswith(DEV_BENCHMARK_PREFIX) and value == value
            }
            row.objective = float(best[OBJECTIVE])
            row.checkpoint = _checkpoint_uri(result, best.get("checkpoint_path"))
        if result.error is not None:
            row.status = f"error: {type(result.error).__name__}"
        elif row.steps and row.steps < row.total_steps:
            row.status = f"stopped at step {row.steps} (ASHA)"
        else:
            row.status = "complete" if reports else "no report"
        rows.append(row)
    ranked = sorted(rows, key=lambda r: -r.objective if not math.isnan(r.objective) else math.inf)
    return sorted(ranked, key=lambda r: not r.baseline)


def best_trials(rows: list[TrialRow], k: int) -> list[TrialRow]:
    """The ``k`` trials with the best dev objective that left a checkpoint."""
    usable = [r for r in rows if r.checkpoint and not math.isnan(r.objective)]
    return sorted(usable, key=lambda r: -r.objective)[:k]
