"""A sweep whose driver is killed mid-way resumes when started again with the same name
(``Tuner.restore``): trials finished before the kill are not run again, and the sweep completes."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_config
from pipeline.stages.fuse import fusion_candidates

REPO = Path(__file__).resolve().parent.parent
ARGS = [
    "tune.num_samples=2",
    "tune.max_concurrent_trials=1",
    "tune.asha=false",
    "tune.best_k=2",
    "train.num_workers=1",
    "train.max_steps=12",
    "train.eval_every=4",
    "fusion.methods=[soup]",
]


def _statuses(tuner_dir: Path) -> dict[str, str]:
    """trial id -> status, from Tune's latest experiment state file."""
    files = sorted(glob.glob(str(tuner_dir / "experiment_state-*.json")))  # named by start time
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except json.JSONDecodeError:  # caught mid-write
        return {}
    trials = (json.loads(trial) for trial, _ in state["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def _sweep(root: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tune.sweep", "--config", "smoke", f"run.root={root}", *ARGS],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow  # about 5 min here (two smoke trials, a kill, a restore); keeps make test short
def test_tune_sweep_killed_mid_way_restores_without_rerunning_finished_trials(tmp_path):
    sweep = tmp_path / "smoke" / "tune" / "sweep"
    log = tmp_path / "sweep.log"
    first = _sweep(tmp_path, log)
    deadline = time.monotonic() + 600
    done: list[str] = []
    while time.monotonic() < deadline and first.poll() is None:
        statuses = _statuses(sweep / "tuner")
        done = [t for t, s in statuses.items() if s == "TERMINATED"]
        if done and len(done) < 2:
            break
        time.sleep(1)
    assert first.poll() is None, (
        f"sweep ended before it could be killed:\n{log.read_text()[-3000:]}"
    )
    assert done, f"no trial finished in time:\n{log.read_text()[-3000:]}"
    logs = {t: sweep / "trials" / t / "metrics.jsonl" for t in done}
    before = {t: (p.read_bytes(), p.stat().st_mtime_ns) for t, p in logs.items()}
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything in its session
    first.wait()
    time.sleep(5)  # let the dead driver's Ray processes go

    second = _sweep(tmp_path, log)
    assert second.wait(timeout=900) == 0, log.read_text()[-5000:]
    assert "restoring the interrupted sweep" in log.read_text()
    final = _statuses(sweep / "tuner")
    assert sorted(final.values()) == ["TERMINATED"] * 2, final
    for trial, path in logs.items():  # finished trials were not trained again
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before[trial], trial
    rows = json.loads((sweep / "trials.json").read_text())
    assert len(rows) == 2 and all(r["steps"] == 12 for r in rows)
    assert all(r["objective"] == r["objective"] for r in rows)  # every one scored (no NaN)
    assert rows[0]["baseline"] and sum(r["baseline"] for r in rows) == 1

    # the report: table, Pareto plot, the best trials handed to the pipeline's fusion stage
    report = (sweep / "sweep.md").read_text()
    assert all(r["trial_id"] in report for r in rows) and "fused:soup of the best 2" in report
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = load_config("smoke", [f"run.root={tmp_path}", *ARGS, "fusion.candidates=tune_best_k"])
    best = json.loads((sweep / "best.json").read_text())["trials"]
    assert [b["objective"] for b in best] == sorted((r["objective"] for r in rows), reverse=True)[
        :2
    ]
    assert fusion_candidates(cfg, {}) == {f"tune:{b['trial']}": b["checkpoint"] for b in best}
    assert all(Path(b["checkpoint"], "model.safetensors").is_file() for b in best)

    # MLflow: one sweep run (resumed, not duplicated) with the trials nested under it
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/smoke/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("codiemb").experiment_id])
    parents = [r for r in runs if r.info.run_name == "smoke-sweep-sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    trial_ids = {r["trial_id"] for r in rows}
    assert {c.data.tags["trial_name"].removeprefix("run_trial_") for c in children} == trial_ids
    assert "fused_objective" in parents[0].data.metrics
