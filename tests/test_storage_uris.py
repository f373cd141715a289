"""Run artifacts on URIs: the storage helpers against a ``file://`` URI and a local S3-compatible
server (moto, in this process; never a public endpoint), and the smoke pipeline with its whole run
directory in that S3 bucket (Ray Train checkpoints, fusion and the final model read from there)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from pipeline import storage

BUCKET = "codiemb"


@pytest.fixture(scope="module")
def s3_endpoint(free_port):
    """A moto S3 server on localhost with one bucket; the AWS variables point pyarrow (and Ray's
    workers, started after this) at it, and are restored afterwards."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(params=["file", "s3"])
def store_root(request, tmp_path):
    """A fresh root folder as a ``file://`` URI or in the moto bucket."""
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return f"{request.getfixturevalue('s3_endpoint')}/{tmp_path.name}"


def _model_folder(root) -> str:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "optimizer.pt").write_bytes(b"optimizer state")
    (root / "sub" / "config.json").write_text('{"a": 1}')
    return str(root)


def _files(folder: str) -> dict[str, bytes]:
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_copy_fetch_and_publish_round_trip_on_uri_storage(store_root, tmp_path):
    src = _model_folder(tmp_path / "src")
    dest = storage.join(store_root, "train", "best")
    storage.write_bytes(storage.join(dest, "stale.txt"), b"from an earlier run")
    storage.copy_dir(src, dest, skip=("optimizer.pt",))
    fetched = storage.fetch(dest)
    assert _files(fetched) == {"model.safetensors": b"weights", "sub/config.json": b'{"a": 1}'}
    one_file = storage.fetch(storage.join(dest, "sub", "config.json"))
    assert Path(one_file).read_bytes() == b'{"a": 1}'

    target = storage.join(store_root, "base")
    built = storage.build_dir(target)
    assert (storage.local_path(target) == built) == store_root.startswith("file://")
    Path(built).mkdir(parents=True, exist_ok=True)
    (Path(built) / "model.safetensors").write_bytes(b"base weights")
    storage.publish_dir(built, target)
    assert storage.read_bytes(storage.join(target, "model.safetensors")) == b"base weights"
    storage.write_json(storage.join(target, "done.json"), {"input_hash": "x"})
    assert storage.read_json(storage.join(target, "done.json")) == {"input_hash": "x"}


def test_uri_of_gives_back_a_uri_this_module_reads(store_root):
    path = storage.join(store_root, "ckpt", "model.safetensors")
    storage.write_bytes(path, b"w")
    fs, inner = pafs.FileSystem.from_uri(path)
    assert storage.read_bytes(storage.uri_of(fs, inner)) == b"w"
    with pytest.raises(ValueError, match="unsupported filesystem"):
        storage.uri_of(pafs.SubTreeFileSystem("/tmp", pafs.LocalFileSystem()), "x")


@pytest.fixture(scope="module")
def ray_with_s3(s3_endpoint):
    """A Ray session started after the AWS variables are set, so its workers reach the server."""
    import ray

    ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False)
    yield s3_endpoint
    ray.shutdown()


@pytest.mark.slow  # about 4 min here; make test runs the file:// pipeline of test_two_node_cluster
def test_smoke_pipeline_with_its_run_directory_in_s3(ray_with_s3, tmp_path):
    from jobs import pipeline
    from pipeline.config import load_config

    root = f"{ray_with_s3}/runs"
    cfg = load_config(
        "smoke",
        [
            f"run.root={root}",
            "run.name=on-s3",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ],
    )
    outcome = pipeline.main(cfg)
    run_dir = f"{root}/on-s3"
    assert outcome["final"] == f"{run_dir}/final"
    for artifact in ("report.md", "tradeoff.png", "final/model.safetensors"):
        assert storage.exists(storage.join(run_dir, artifact)), artifact
    assert {"base", "joint"} <= set(storage.read_json(storage.join(run_dir, "eval.json")))
    best = storage.join(run_dir, "train", "joint", "best")
    assert storage.exists(storage.join(best, "model.safetensors"))
    assert not storage.exists(storage.join(best, "optimizer.pt"))  # training-only files left out
    fs, inner = storage.filesystem(storage.join(run_dir, "ray"))
    saved = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    assert any(f.base_name == "model.safetensors" and "/step_" in f.path for f in saved)
