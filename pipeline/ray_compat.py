"""Every use of Ray's private APIs (``ray.*._internal``) in the project, in one place.

Written against ray 2.60.0 (``WRITTEN_FOR``, the pin in pyproject.toml). Private names can move or
vanish in any Ray release, so each is looked up through ``private_api``: on a Ray that lacks one, the
call raises ``RayPrivateApiMissing`` naming the private API, the Ray version this module was written
for and the installed one, instead of an ``ImportError`` deep inside a Train worker or a Tune trial.
On a Ray upgrade, check each function below and then move ``WRITTEN_FOR``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import ray

WRITTEN_FOR = "2.60.0"

# Ray Train V2's per-worker report context: it logs one INFO line per ``ray.train.report``.
TRAIN_REPORT_CONTEXT = "ray.train.v2._internal.execution.context"
# The Train session a Tune trial reports through; Tune's own ``TuneReportCallback`` reads it too.
TUNE_SESSION_MODULE, TUNE_SESSION_GETTER = "ray.train._internal.session", "get_session"


class RayPrivateApiMissing(RuntimeError):
    """A private Ray API this project relies on is not in the installed Ray."""


def private_api(module: str, name: str | None = None) -> Any:
    """The private Ray module ``module``, or its attribute ``name``; ``RayPrivateApiMissing`` (naming
    the API, ``WRITTEN_FOR`` and the installed Ray) when this Ray has no such thing."""
    where = f"{module}.{name}" if name else module
    try:
        found = importlib.import_module(module)
        return getattr(found, name) if name else found
    except (ImportError, AttributeError) as exc:
        raise RayPrivateApiMissing(
            f"Ray's private API {where} is missing from the installed ray {ray.__version__}; "
            f"pipeline/ray_compat.py was written against ray {WRITTEN_FOR} (the pin in "
            f"pyproject.toml): install ray=={WRITTEN_FOR}, or port pipeline/ray_compat.py"
        ) from exc


def train_report_logger() -> logging.Logger:
    """The logger of Ray Train V2's INFO line for every ``ray.train.report`` of every worker
    ("Reporting training result N: TrainingReport(...)"). It is named by its module's file path, so
    ``RunConfig(logging_config=...)``, which filters ``ray.train.*`` names, does not reach it."""
    return logging.getLogger(private_api(TRAIN_REPORT_CONTEXT).__file__)


@contextlib.contextmanager
def exit_when_tune_stops_trial(trial_id: str, poll_s: float = 1.0) -> Iterator[None]:
    """Around a Tune trial's ``trainer.fit()``: if the trial's Tune session closes while the body
    still runs, end this process with ``os._exit(0)``.

    Why: Tune stops a trial (ASHA) by closing its session, but the Train V2 run the trial started
    goes on holding its workers' CPUs (ray-project/ray#54305, ray 2.60), so later trials wait
    forever. Ending the trial's process makes Ray stop the actors it owns (the Train controller,
    which owns the workers and the dataset readers). The private session getter is looked up before
    the body starts, so a Ray without it fails here rather than in the watcher thread."""
    get_session = private_api(TUNE_SESSION_MODULE, TUNE_SESSION_GETTER)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if get_session() is None:
                print(f"[tune] {trial_id} stopped by Tune: ending its Train run", flush=True)
                os._exit(0)

    threading.Thread(target=watch, name=f"end-run-{trial_id}", daemon=True).start()
    try:
        yield
    finally:
        done.set()
