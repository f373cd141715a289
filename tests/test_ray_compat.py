"""``pipeline/ray_compat.py``: the private Ray APIs work on the installed (pinned) Ray, and on a Ray
that lacks one the error names the API and the version it was written for. Also: no other module of
``pipeline/``, ``jobs/`` or ``tune/`` touches ``ray.*._internal``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import ray

from pipeline import ray_compat

REPO = Path(__file__).resolve().parent.parent


def test_written_for_the_installed_and_pinned_ray():
    """A Ray upgrade fails here first: check each private API, then move ``WRITTEN_FOR``."""
    pin = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and pin[1] == ray_compat.WRITTEN_FOR == ray.__version__


def test_train_report_logger_is_the_report_context_modules():
    logger = ray_compat.train_report_logger()
    assert Path(logger.name).is_file()
    assert logger.name.endswith("ray/train/v2/_internal/execution/context.py")


def test_private_api_finds_the_tune_session_getter():
    get_session = ray_compat.private_api(
        ray_compat.TUNE_SESSION_MODULE, ray_compat.TUNE_SESSION_GETTER
    )
    assert get_session() is None  # no Tune trial in this process


@pytest.mark.parametrize("version", ["2.61.0", "3.0.0"])
def test_a_missing_attribute_names_the_api_and_both_versions(monkeypatch, version):
    monkeypatch.setattr(ray, "__version__", version)
    session = importlib.import_module(ray_compat.TUNE_SESSION_MODULE)
    monkeypatch.delattr(session, ray_compat.TUNE_SESSION_GETTER)
    with (
        pytest.raises(ray_compat.RayPrivateApiMissing) as caught,
        ray_compat.exit_when_tune_stops_trial("t1"),
    ):
        pytest.fail("the body ran without the private API")
    message = str(caught.value)
    assert "ray.train._internal.session.get_session" in message
    assert f"ray {version}" in message and "ray 2.60.0" in message


def test_a_missing_module_names_the_api(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "2.99.0")
    monkeypatch.setitem(sys.modules, ray_compat.TRAIN_REPORT_CONTEXT, None)  # import -> ImportError
    with pytest.raises(
        ray_compat.RayPrivateApiMissing, match=re.escape(ray_compat.TRAIN_REPORT_CONTEXT)
    ):
        ray_compat.train_report_logger()


def test_the_watcher_ends_the_process_once_the_tune_session_is_gone():
    """Outside a Tune trial there is no session, which is what a stopped trial looks like: the
    process ends (exit 0) within a poll while the body still runs."""
    script = textwrap.dedent(
        """
        import time
        from pipeline.ray_compat import exit_when_tune_stops_trial

        with exit_when_tune_stops_trial("trial-1", poll_s=0.05):
            time.sleep(60)
        print("body finished")
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "[tune] trial-1 stopped by Tune: ending its Train run" in done.stdout
    assert "body finished" not in done.stdout
    assert time.monotonic() - started < 30


def test_the_watcher_stops_when_the_body_ends():
    """(A poll far longer than the test: the thread must not look at the session, which is absent
    here, and end the test process.)"""
    with ray_compat.exit_when_tune_stops_trial("trial-2", poll_s=10):
        pass
    time.sleep(0.1)
    # done.set() wakes the thread at once: it returns instead of polling again
    assert "end-run-trial-2" not in {thread.name for thread in threading.enumerate()}


def test_no_other_module_uses_ray_private_apis():
    users = [
        str(path.relative_to(REPO))
        for folder in ("pipeline", "jobs", "tune")
        for path in sorted((REPO / folder).rglob("*.py"))
        if "_internal" in path.read_text() and path.name != "ray_compat.py"
    ]
    assert users == []
