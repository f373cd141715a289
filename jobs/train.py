"""Train the configured mode(s) with Ray Train: ``python -m jobs.train --config configs/reproduce.yaml``.

Needs ``jobs.prepare`` and ``jobs.mine`` first. ``train.mode=ir_only`` picks one mode; re-running
the same run name and settings resumes from the latest checkpoint (changed settings start a new
Ray Train run, see ``pipeline.train.driver.ray_run_name``)."""

from __future__ import annotations

import ray

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.train.driver import train_mode


def main(cfg: Config) -> None:
    ray.init(ignore_reinit_error=True)
    outcome = train_mode(cfg, cfg.train.mode)
    print(f"[train:{outcome.mode}] {outcome.steps} steps")
    print(f"  final model : {outcome.final_model}")
    print(f"  best model  : {outcome.best_model}  (by {cfg.train.checkpoint_metric})")
    print(f"  metrics     : {outcome.metrics_path}")


if __name__ == "__main__":
    run_main(main, description=__doc__)
