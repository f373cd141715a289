"""The fuse stage alone: fuse the config's candidates with every fusion method, choose on dev.

    python -m jobs.fuse --config configs/reproduce.yaml        # the modes jobs.pipeline trained
    python -m jobs.fuse --config configs/reproduce.yaml fusion.candidates=paths \\
        "fusion.paths=[runs/a/train/joint/best,runs/b/train/joint/best]" run.name=fuse-a-b

Needs ``jobs.prepare`` and ``jobs.mine`` of the run (its dev data) and, for candidates ``modes`` or
``top_k``, the pipeline's finished training with the same settings. Writes ``<run dir>/fuse/``:
each method's best variant and ``selection.json`` (every variant's dev objective).
"""

from __future__ import annotations

import ray

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.stages import fuse, train


def main(cfg: Config) -> dict:
    ray.init(ignore_reinit_error=True)
    base = train.base_model(cfg)
    trained = train.run(cfg, fuse.modes_to_read(cfg), train_missing=False)
    candidates = fuse.fusion_candidates(cfg, trained)
    selection, chosen = fuse.run(cfg, base, candidates)
    scores = fuse.dev_selection_scores(selection, candidates)
    for name, score in sorted(scores.items(), key=lambda item: -item[1]):
        print(f"  {score:7.2f}  {name}")
    print(f"[fuse] chosen on dev: {selection['best']} -> {chosen}")
    return selection


if __name__ == "__main__":
    run_main(main, description=__doc__)
