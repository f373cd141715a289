"""Ray Tune sweeps (``pytest -k "tune or sweep"``): the search space and its validation, the sweep
report, and an 8-trial sweep of the smoke preset end to end (ASHA, MLflow runs nested under the sweep,
the best trials fused, ``pareto.png``, ``best.json`` read back by the pipeline's fusion stage) —
marked slow: ``pytest --run-slow -k sweep``. ``test_tune_restore.py`` runs a 3-trial sweep in
``make test``."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.config import ConfigError, load_config, with_overrides
from pipeline.stages.fuse import fusion_candidates
from pipeline.train.dev import dev_objective
from tune.report import trials_table, verdict, write_sweep_report
from tune.runner import TrialRow, best_trials
from tune.space import DEFAULT_SPACE, baseline_params, param_space, searcher

SWEEP = [
    "tune.num_samples=8",
    "tune.max_concurrent_trials=1",  # one at a time: 2 cores
    "train.num_workers=1",
    "train.max_steps=12",
    "train.eval_every=4",
    "tune.best_k=3",
    "fusion.methods=[soup,delta]",
    "fusion.delta_power=[1.0]",
]


def test_tune_default_space_covers_sampler_sts_weights_ir_temperature_and_lr():
    cfg = load_config("smoke")
    space = param_space(cfg)
    assert set(space) == set(DEFAULT_SPACE)
    assert {"sampler.mode", "sampler.ir_ratio", "sampler.alpha", "train.lr"} <= set(space)
    assert {f"loss.w_{w}" for w in ("midnce", "pro", "pearson", "rankkl")} <= set(space)
    baseline = baseline_params(cfg)
    assert baseline["loss.w_rankkl"] == cfg.loss.w_rankkl == 5.0
    assert baseline["sampler.mode"] == "proportional"


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"loss.w_nope": {"uniform": [0.0, 1.0]}}, "loss.w_nope"),
        ({"sampler.ir_ratio": {"uniform": [0.1, 1.5]}}, "sampler.ir_ratio"),
        ({"train.lr": {"normal": [0.0, 1.0]}}, "tune.space.train.lr"),
        ({"train.lr": {"loguniform": [1e-4, 1e-5]}}, "low < high"),
        ({"sampler.mode": {"choice": ["proportional", "sideways"]}}, "sampler.mode"),
    ],
)
def test_tune_bad_space_fails_at_start_naming_the_key(space, message):
    cfg = with_overrides(load_config("smoke"), {"tune.space": space})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        param_space(cfg)


def test_tune_random_searcher_respects_max_concurrent_trials():
    cfg = load_config("smoke", ["tune.max_concurrent_trials=2"])
    search = searcher(cfg)
    assert search.max_concurrent == 2


def test_tune_optuna_searcher_suggests_the_baseline_then_values_inside_the_space():
    pytest.importorskip("optuna")
    cfg = load_config("smoke", ["tune.search=optuna"])
    search = searcher(cfg)
    assert search.set_search_properties("dev_objective", "max", param_space(cfg))
    first, second = search.suggest("t0"), search.suggest("t1")
    assert first == baseline_params(cfg)
    for key, spec in DEFAULT_SPACE.items():
        ((kind, args),) = spec.items()
        if kind == "choice":
            assert second[key] in args
        else:
            assert args[0] <= second[key] <= args[1], key


def test_sweep_dev_objective_weights_and_renormalises_over_present_metrics():
    metrics = {"dev_sts_spearman": 80.0, "dev_ir_ndcg@10": 60.0}
    assert dev_objective(metrics, None) == pytest.approx(70.0)
    assert dev_objective(metrics, {"dev_sts_spearman": 3, "dev_ir_ndcg@10": 1}) == pytest.approx(
        75.0
    )
    assert (
        dev_objective({"dev_sts_spearman": 80.0}, {"dev_sts_spearman": 1, "dev_ir_ndcg@10": 9})
        == 80.0
    )
    with pytest.raises(ValueError, match="no dev metric"):
        dev_objective({"loss": 1.0}, None)
    with pytest.raises(ConfigError, match="train.objective"):
        load_config("smoke", ["train.objective={dev_sts: 1.0}"])


def _row(trial_id, sts, ir, baseline=False, checkpoint="ckpt"):
    return TrialRow(
        trial_id=trial_id,
        params={"loss.w_pearson": 2.0, "sampler.mode": "ratio"},
        status="complete",
        steps=12,
        total_steps=12,
        best_step=12,
        dev_sts=sts,
        dev_ir=ir,
        objective=(sts + ir) / 2,
        checkpoint=checkpoint,
        baseline=baseline,
    )


def test_sweep_report_table_verdict_best_and_pareto(tmp_path):
    rows = [_row("a", 80.0, 60.0, baseline=True), _row("b", 82.0, 61.0), _row("c", 79.0, 65.0)]
    rows.append(_row("d", math.nan, math.nan, checkpoint=""))
    best = best_trials(rows, 2)
    assert [r.trial_id for r in best] == ["c", "b"]  # 72.0 > 71.5; d has no checkpoint
    assert "+2.00" in verdict(rows) and "c" in verdict(rows)
    table = trials_table(rows)
    assert table.count("\n") == 1 + len(rows) and "a (baseline)" in table and "| – |" in table
    fused = {
        "name": "fused:soup",
        "of": ["tune:c", "tune:b"],
        "dev_sts": 81.0,
        "dev_ir": 66.0,
        "objective": 73.5,
    }
    paths = write_sweep_report(str(tmp_path), rows, best, fused, title="test sweep")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "sweep.md").read_text()
    assert "fused:soup of the best 2" in report and "Pareto front" in report
    front = "Pareto front (STS dev Spearman; IR dev nDCG@10): fused:soup, b."
    assert front in report  # the fused model dominates c
    assert set(paths) == {"report", "trials", "best", "pareto"}


def test_sweep_report_gives_each_out_of_domain_dev_set_a_column_and_a_front(tmp_path):
    rows = [_row("a", 80.0, 60.0, baseline=True), _row("b", 82.0, 61.0), _row("c", 79.0, 65.0)]
    for row, ood in zip(rows, (70.0, 67.0, 68.0)):
        row.extra = {"dev:trecqa-train": ood}
    table = trials_table(rows)
    assert "| dev:trecqa-train | objective |" in table.splitlines()[0]
    assert "| 61.00 | 67.00 | **71.50** |" in table  # b: IR dev, out-of-domain, objective
    write_sweep_report(str(tmp_path), rows, best_trials(rows, 2), None, title="ood sweep")
    report = (tmp_path / "sweep.md").read_text()
    # (in-domain mean, out-of-domain): a (70.0, 70.0), b (71.5, 67.0), c (72.0, 68.0): c dominates b
    front = (
        "Pareto front (in-domain dev: mean of STS dev and IR dev; out-of-domain dev:trecqa-train)"
    )
    assert f"{front}: a (baseline), c." in report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The 8-trial sweep, one trial at a time, on a Ray session with 4 logical CPUs (tiny models: the
    two cores are shared, not oversubscribed in practice)."""
    import ray

    from tune.sweep import main

    ray.init(  # with the dashboard: Train's placement-group cleaner asks the state API whether a
        # stopped trial's controller is gone, and without it never frees the trial's CPUs
        num_cpus=4,
        object_store_memory=300 * 1024**2,
        include_dashboard=True,
        log_to_driver=False,
    )
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("smoke", [f"run.root={root}", *SWEEP])
    yield cfg, main(cfg)
    ray.shutdown()


@pytest.mark.slow  # minutes here; make test runs the 2-trial sweep of tests/test_tune_restore.py
def test_sweep_of_eight_smoke_trials_writes_table_pareto_and_best(sweep):
    cfg, out = sweep
    rows = out["rows"]
    assert len(rows) == 8
    assert rows[0].baseline and sum(r.baseline for r in rows) == 1
    scored = [r for r in rows if not math.isnan(r.objective)]
    assert len(scored) == 8, [r.status for r in rows]  # every trial reached its first eval
    for r in scored:
        assert r.objective == pytest.approx((r.dev_sts + r.dev_ir) / 2, abs=1e-6)
        assert r.status == "complete" or r.status.startswith("stopped at step")
    # ASHA never stops a trial before the grace period (the first eval at step 4); it did stop some,
    # and the trials after them still ran (a stopped trial ends its Train run and frees its CPUs)
    assert all(r.steps >= 4 for r in rows)
    assert any(r.status.startswith("stopped at step") for r in rows)
    assert len(out["best"]) == 3
    assert out["best"][0].objective == max(r.objective for r in scored)
    paths = out["paths"]
    with open(paths["pareto"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert out["fused"] is not None and out["fused"]["name"].startswith("fused:")
    assert out["fused"]["name"] in Path(paths["report"]).read_text()


@pytest.mark.slow  # minutes here; make test runs the 2-trial sweep of tests/test_tune_restore.py
def test_sweep_logs_every_trial_as_a_nested_mlflow_run(sweep):
    cfg, out = sweep
    uri = f"sqlite:///{cfg.run.root}/smoke/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name == "smoke-sweep-sweep"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 8
    assert all("dev_objective" in r.data.metrics for r in children)
    assert any("dev_ir_ndcg_10" in r.data.metrics for r in children)
    assert parent[0].data.metrics["best_trial_objective"] == pytest.approx(out["best"][0].objective)
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "sweep")}
    assert {"sweep/pareto.png", "sweep/sweep.md", "sweep/best.json"} <= artifacts
    mlflow.set_tracking_uri("")  # leave no global URI behind for other modules


@pytest.mark.slow  # minutes here; make test runs the 2-trial sweep of tests/test_tune_restore.py
def test_sweep_best_trials_become_the_pipelines_fusion_candidates(sweep):
    cfg, out = sweep
    candidates = fusion_candidates(with_overrides(cfg, {"fusion.candidates": "tune_best_k"}), {})
    assert list(candidates) == [f"tune:{r.trial_id}" for r in out["best"]]
    assert all(path == r.checkpoint for path, r in zip(candidates.values(), out["best"]))


def test_sweep_refuses_trials_that_leave_ray_data_no_cpu():
    from pipeline.train.driver import check_data_headroom

    cfg = load_config("smoke", ["train.num_workers=1", "train.cpus_per_worker=0.5"])
    check_data_headroom(cfg, 2.0, concurrent_runs=1)  # 0.5 CPU of 2: fine
    with pytest.raises(ConfigError, match="tune.max_concurrent_trials"):
        check_data_headroom(cfg, 2.0, concurrent_runs=2, per_run_extra=0.01)
