"""The smoke pipeline on a two-node Ray cluster (``ray.cluster_utils.Cluster``, both nodes on this
machine) with its run directory on a ``file://`` URI: the two Train workers land on different
nodes, and the run leaves what a single-node run leaves (see ``smoke_outputs``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors
from smoke_outputs import assert_smoke_run_outputs

from jobs import pipeline
from pipeline.config import load_config

# 2 workers x 1.6 CPUs fit on neither node alone (2 and 3 CPUs), so one lands on each; the worker
# node keeps 1.4 CPUs for Ray Data (its file listing needs a whole CPU).
HEAD_CPUS, WORKER_NODE_CPUS, CPUS_PER_TRAIN_WORKER = 2, 3, 1.6


@pytest.fixture(scope="module")
def two_node_cluster(free_port):
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": HEAD_CPUS,
            "object_store_memory": 200 * 1024**2,
            # its own dashboard port: the state API below needs this cluster's dashboard, and
            # another Ray on the machine (a demo, a job) already holds the default 8265
            "dashboard_port": free_port(),
        },
    )
    cluster.add_node(num_cpus=WORKER_NODE_CPUS, object_store_memory=200 * 1024**2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_node_cluster_runs_the_smoke_pipeline_on_file_uri_storage(two_node_cluster, tmp_path):
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    root = tmp_path / "runs"
    cfg = load_config(
        "smoke",
        [
            f"run.root={root.as_uri()}",
            "run.name=two-nodes",
            "train.num_workers=2",
            f"train.cpus_per_worker={CPUS_PER_TRAIN_WORKER}",
        ],
    )
    assert cfg.run.dir.startswith("file://")
    outcome = pipeline.main(cfg)

    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000)
    assert {w.node_id for w in workers} == nodes, "the Train workers did not span both nodes"
    run_dir = root / "two-nodes"
    results = assert_smoke_run_outputs(run_dir)
    assert set(outcome["results"]) == set(results)
    # Ray Train wrote its checkpoints under the URI's folder, and the best one was copied out of it
    assert any((run_dir / "ray").rglob("step_*/model.safetensors"))
    assert (run_dir / "train" / "joint" / "best" / "model.safetensors").is_file()
    assert Path(outcome["final"].removeprefix("file://")).resolve() == (run_dir / "final").resolve()
