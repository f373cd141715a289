"""Train the configured mode(s) with Ray Train: ``python -m jobs.train --config configs/reproduce.yaml``.

Needs ``jobs.prepare`` and ``jobs.mine`` first. ``train.mode=ir_only`` picks one mode; a finished
mode with the same settings is reused, an interrupted one resumes from its latest checkpoint
(changed settings start a new Ray Train run, see ``pipeline.stages.train.ray_run_name``)."""

from __future__ import annotations

import ray

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.stages import train


def main(cfg: Config) -> None:
    ray.init(ignore_reinit_error=True)
    mode = cfg.train.mode
    done = train.run(cfg, [mode])[mode]
    print(f"[train:{mode}] {done.get('steps', '?')} steps")
    print(f"  final model : {done['final']}")
    print(f"  best model  : {done['best']}  (by {cfg.train.checkpoint_metric})")
    print(f"  metrics     : {done['metrics']}")


if __name__ == "__main__":
    run_main(main, description=__doc__)
