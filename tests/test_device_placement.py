"""Where work runs and with how many threads, on GPU runs and in containers (issue #21, findings
2-4 and 7), checked on this CPU: the cgroup CPU limit and the Ray reservation size torch threads,
GPU runs hand inference to Ray tasks that hold a GPU, bf16 only where asked for and supported, the
Ray Data headroom check covers GPU runs, and an ``eval_every`` that cannot fire is refused."""

from __future__ import annotations

import os

import pytest
import ray
import torch

from pipeline.config import ConfigError, load_config
from pipeline.inference import inference_device, on_inference_device, precision_label
from pipeline.model.encoder import autocast_dtype
from pipeline.stages import evaluate, fuse
from pipeline.train.driver import check_data_headroom, check_eval_every
from pipeline.train.threads import cgroup_cpu_limit, dev_threads, usable_cpus, worker_threads


@pytest.fixture
def cgroup(tmp_path):
    """A fake cgroup v2 root whose ``cpu.max`` the test writes."""

    def limit(text: str) -> str:
        (tmp_path / "cpu.max").write_text(text)
        return str(tmp_path)

    return limit


def test_device_cgroup_quota_is_read_in_both_formats(cgroup, tmp_path_factory):
    assert cgroup_cpu_limit(cgroup("250000 100000\n")) == 2.5
    assert cgroup_cpu_limit(cgroup("max 100000\n")) is None
    v1 = tmp_path_factory.mktemp("v1")
    (v1 / "cpu").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(str(v1)) == 4.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(str(v1)) is None
    assert cgroup_cpu_limit(str(tmp_path_factory.mktemp("none"))) is None


def test_device_worker_threads_follow_the_pod_limit_and_the_reservation(cgroup, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))  # a 64-core node
    pod = cgroup("800000 100000")  # an 8-CPU pod on it
    assert usable_cpus(pod) == 8
    assert worker_threads(0, local_workers=2, reserved_cpus=8, root=pod) == 4  # not 32
    assert worker_threads(0, local_workers=1, reserved_cpus=4, root=pod) == 4  # its reservation
    assert worker_threads(0, local_workers=2, reserved_cpus=0.5, root=pod) == 4  # a share
    assert worker_threads(3, local_workers=2, reserved_cpus=0.5, root=pod) == 3  # asked for
    assert worker_threads(0, local_workers=16, reserved_cpus=0.5, root=pod) == 1  # never 0
    unlimited = cgroup("max 100000")
    assert worker_threads(0, local_workers=1, reserved_cpus=4, root=unlimited) == 4  # not 64


def test_device_dev_threads_count_the_workers_of_this_node_within_the_pod(cgroup, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    pod = cgroup("800000 100000")
    assert dev_threads(4, local_workers=2, root=pod) == 8
    assert dev_threads(4, local_workers=4, root=pod) == 8  # not 16 on an 8-CPU pod


def test_device_bf16_only_where_asked_and_supported(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, bf16=True) is None
    assert autocast_dtype(cuda, bf16=False) is None  # fp32 on a GPU unless the config asks
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, bf16=True) == torch.bfloat16
    assert precision_label(cuda, True) == "cuda-bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision_label(cuda, True) == "cuda-fp32"  # e.g. a V100
    assert precision_label(cpu, False) == "cpu-fp32"


def test_device_gpu_run_without_a_visible_gpu_fails_loudly():
    assert inference_device(False) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        inference_device(True)


def test_device_headroom_is_checked_for_gpu_runs_too():
    cfg = load_config("gpu")  # one worker reserving 4 CPUs
    with pytest.raises(ConfigError, match="leave less than 1"):
        check_data_headroom(cfg, total_cpus=4.0)  # a 4-vCPU GPU VM: Ray Data would never read
    check_data_headroom(cfg, total_cpus=8.0)
    scaling = load_config("gpu", ["run.autoscaling=true"])
    check_data_headroom(scaling, total_cpus=4.0)  # the autoscaler adds nodes: no hang


def test_device_eval_every_that_never_fires_is_refused():
    cfg = load_config("cluster", ["train.eval_every=200"])
    with pytest.raises(ConfigError, match=r"train.eval_every=200 never fires .* \(112 steps\)"):
        check_eval_every(cfg, "joint", total_steps=112)
    check_eval_every(load_config("cluster"), "joint", total_steps=112)
    check_eval_every(load_config("cluster", ["train.keep_top_k=1"]), "joint", total_steps=112)


@pytest.fixture(scope="module")
def gpu_cluster():
    """A local Ray session that advertises one (fake) GPU: tasks that ask for it are scheduled."""
    ray.init(
        num_cpus=2,
        num_gpus=1,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_device_inference_runs_in_a_gpu_task_on_gpu_runs(gpu_cluster):
    def _where() -> tuple[int, list]:  # defined here: Ray ships it by value, not by module name
        return os.getpid(), ray.get_gpu_ids()

    assert on_inference_device(False, _where) == (os.getpid(), [])  # a CPU run: here
    pid, gpus = on_inference_device(True, _where)
    assert pid != os.getpid() and len(gpus) == 1  # a task that holds the GPU


@pytest.mark.parametrize("stage", ["evaluate", "dev"])
def test_device_evaluation_and_dev_scoring_leave_the_driver_on_gpu_runs(gpu_cluster, stage):
    """The evaluate stage and the fuse stage's dev scoring run in a task holding the GPU: this
    machine has none, so the task (not the driver) reports that it sees no CUDA device."""
    cfg = load_config("smoke", ["train.use_gpu=true"])
    score = evaluate.evaluate_folder if stage == "evaluate" else fuse.dev_scores
    with pytest.raises(ray.exceptions.RayTaskError, match="sees no CUDA device"):
        score(cfg, "/no/model/needed")
