"""The main job as users run it: `ray job submit` to a local `ray start --head`, smoke preset.

The head runs from this venv (the job's `python` is the head's); it is started with `--block` in its
own process group and that group is killed at the end (never `ray stop`, which would stop every Ray
instance on the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smoke_outputs import assert_smoke_run_outputs

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
DATA = (REPO.parent / "shared" / "data").resolve()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local Ray head with the job server; yields its dashboard address."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this venv's
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    dashboard = _free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={_free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # every port its own, so a Ray instance already running here cannot collide with it
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
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


def test_ray_job_submit_runs_the_smoke_pipeline(ray_head, tmp_path):
    address, env = ray_head
    root = tmp_path / "runs"
    submit = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
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
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    assert_smoke_run_outputs(root / "smoke")
