"""The stages of a run, one module each: prepare -> mine -> train -> fuse -> evaluate -> register ->
report. Each has the same shape: ``run(...)`` takes the config (or its sections) and the upstream
stages' outputs, keys its work with ``pipeline.stage_cache`` (``done.json`` in its output folder),
and writes named outputs under the run directory. ``jobs/`` and ``tune/`` call these; the component
packages (``data``, ``model``, ``train``, ``fusion``, ``eval``, ...) never import them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pipeline.config import Config
from pipeline.stages import mine, prepare

StageContext = Callable[[str, str], AbstractContextManager]


def _untracked(name: str, record: str) -> AbstractContextManager:
    return nullcontext()


def prepare_and_mine(
    cfg: Config, stage: StageContext = _untracked
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data stages every training run starts with: (prepared manifest, mining stats). Each runs
    inside ``stage(name, record file)`` (the main job's clock and MLflow stage run)."""
    with stage("prepare", prepare.manifest_path(cfg.run.dir)):
        manifest = prepare.run(cfg.data, cfg.run.dir)
    with stage("mine", mine.stats_path(cfg.run.dir)):
        stats = mine.run(cfg)
    return manifest, stats
