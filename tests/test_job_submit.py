"""The main job as users run it: `ray job submit` to a local `ray start --head`, smoke preset; and
(slow) a job stopped in the middle of training and submitted again with the same run name.

The head runs from this venv (the job's `python` is the head's); it is started with `--block` in its
own process group and that group is killed at the end (never `ray stop`, which would stop every Ray
instance on the machine)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from smoke_outputs import assert_smoke_run_outputs

from pipeline.config import load_config
from pipeline.stages import fuse

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, free_port):
    """A local Ray head with the job server; yields its dashboard address."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this venv's
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    dashboard = free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # every port its own, so a Ray instance already running here cannot collide with it
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
            "--object-store-memory=300000000",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:  # ready when the node's job agent accepts a trivial job
            probe = subprocess.run(
                [
                    str(BIN / "ray"),
                    "job",
                    "submit",
                    "--address",
                    address,
                    "--",
                    "python",
                    "-c",
                    "0",
                ],
                env=env,
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            time.sleep(3)
        else:
            pytest.fail("the Ray head's job server did not accept a job in 180 s")
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def _ray_job(address: str, env: dict, *args: str, timeout: float = 1200):
    return subprocess.run(
        [str(BIN / "ray"), "job", *args[:1], "--address", address, *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _pipeline_job(root: Path, *overrides: str) -> list[str]:
    """``ray job submit`` arguments after the address: the smoke pipeline under ``root``."""
    return [
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "jobs.pipeline",
        "--config",
        "configs/smoke.yaml",
        f"run.root={root}",
        f"data.root={DATA}",
        *overrides,
    ]


def test_ray_job_submit_runs_the_smoke_pipeline(ray_head, tmp_path):
    address, env = ray_head
    root = tmp_path / "runs"
    submit = _ray_job(address, env, "submit", *_pipeline_job(root))
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    log = submit.stdout + submit.stderr
    # the job's progress reaches the submitter, without a line per report of every training worker
    assert "[pipeline] train done in" in log and "[train] 2 workers" in log, log[-3000:]
    assert "Reporting training result" not in log
    assert "[train joint] step " in log and " left" in log  # the progress line of rank 0
    assert_smoke_run_outputs(root / "smoke")
    # fusion takes each candidate's dev score from training: scoring the saved folder again agrees
    cfg = load_config("smoke", [f"run.root={root}", f"data.root={DATA}"])
    best = json.loads((root / "smoke" / "train" / "joint" / "done.json").read_text())["best"]
    recorded = fuse.recorded_dev_objective(best, fuse.scoring_precision(cfg))
    assert recorded is not None
    assert fuse.dev_scorer(cfg)(best) == pytest.approx(recorded, abs=1e-6)


@pytest.mark.slow  # about 5 min here: two submissions of the smoke pipeline
def test_restart_of_a_stopped_job_resumes_training_and_skips_finished_stages(ray_head, tmp_path):
    address, env = ray_head
    root = tmp_path / "runs"
    run_dir = root / "restart"
    args = _pipeline_job(root, "run.name=restart", "train.eval_every=4")
    first = _ray_job(address, env, "submit", "--no-wait", "--submission-id", "restart-1", *args)
    assert first.returncode == 0, first.stderr
    deadline = time.time() + 900
    while not list((run_dir / "ray").glob("restart-joint-*/step_000004/train_state.json")):
        assert time.time() < deadline, "no checkpoint at step 4 within 15 min"
        time.sleep(2)
    stop = _ray_job(address, env, "stop", "restart-1", timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    status = _ray_job(address, env, "status", "restart-1").stdout
    assert "stopped" in status.lower(), status
    assert not (run_dir / "train" / "joint" / "done.json").exists()  # it died in training
    stamps = {s: (run_dir / s).stat().st_mtime for s in ("prepared/manifest.json", "mined")}

    second = _ray_job(address, env, "submit", "--submission-id", "restart-2", *args)
    log = second.stdout + second.stderr
    assert second.returncode == 0 and "succeeded" in second.stdout, log[-3000:]
    assert "[mine] inputs unchanged" in log
    assert {s: (run_dir / s).stat().st_mtime for s in stamps} == stamps  # not redone
    started = [int(n) for n in re.findall(r"start at step (\d+)", log)]
    assert started and started[0] >= 4, log[-3000:]  # resumed from the checkpoint, not step 0
    metrics = [json.loads(line) for line in (run_dir / "train/joint/metrics.jsonl").open()]
    steps = [row["step"] for row in metrics]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == metrics[-1]["total_steps"]
    assert_smoke_run_outputs(run_dir)
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("codiemb")
    parents = [
        run
        for run in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    assert [(r.info.run_name, r.info.status) for r in parents] == [("restart", "FINISHED")]
