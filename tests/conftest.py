"""Shared test fixtures: offline environment, the real data folder, one Ray session per module."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real public datasets beside the project (read-only)."""
    if not DATA.is_dir():
        pytest.fail(f"real data folder missing: {DATA}")
    return DATA


def _restoring_tracking_uri():
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``; put it back after each test so
    a test's (possibly unreachable) server never becomes a later test's default (the job resolves
    its store from that variable before its run directory)."""
    yield from _restoring_tracking_uri()


@pytest.fixture(autouse=True, scope="module")
def _no_leaked_tracking_uri_per_module():
    """The same around each module: a module-scoped fixture that runs the main job or registers a
    model sets the variable before any per-test guard saves it."""
    yield from _restoring_tracking_uri()


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session per test module, sized for a 2-core machine."""
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=300 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """A tiny random BERT with the MiniLM tokenizer (built once, cached in the temp folder)."""
    from pipeline.model.loading import resolve_model_path

    return resolve_model_path("tiny-random")


@pytest.fixture(scope="module")
def st_folder(tiny_model_path, tmp_path_factory) -> str:
    """The tiny model saved as a sentence-transformers folder, as the pipeline's ``final/``."""
    from pipeline.model.encoder import Encoder
    from pipeline.model.save import save_pretrained_st

    encoder = Encoder.from_pretrained(tiny_model_path, device="cpu")
    return save_pretrained_st(encoder, tmp_path_factory.mktemp("final") / "final")


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Call it for a TCP port on 127.0.0.1 that nothing listens on (the OS picks it, the test
    releases it): for a server the test starts, or an address that refuses connections."""
    return _unused_port


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow", action="store_true", help="also run tests marked slow (minutes each)"
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only with ``--run-slow`` (their runs are quoted in the README)."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
