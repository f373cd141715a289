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

from pipeline import storage
from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.end_to_end import (
    base_folder,
    dev_selection_scores,
    fuse_checkpoints,
    fusion_candidates,
    train_modes,
)


def modes_to_read(cfg: Config) -> list[str]:
    """The trained modes ``fusion.candidates`` draws on (none for tune trials and paths)."""
    if cfg.fusion.candidates == "modes":
        return cfg.fusion.modes or cfg.train.modes
    if cfg.fusion.candidates == "top_k":
        return [cfg.train.mode]
    return []


def main(cfg: Config) -> dict:
    ray.init(ignore_reinit_error=True)
    base = base_folder(cfg)
    base_digest = storage.file_sha256(storage.join(base, "model.safetensors"))
    trained = train_modes(cfg, base_digest, modes_to_read(cfg), train_missing=False)
    candidates = fusion_candidates(cfg, trained)
    selection, chosen = fuse_checkpoints(cfg, base, candidates)
    scores = dev_selection_scores(selection, candidates)
    for name, score in sorted(scores.items(), key=lambda item: -item[1]):
        print(f"  {score:7.2f}  {name}")
    print(f"[fuse] chosen on dev: {selection['best']} -> {chosen}")
    return selection


if __name__ == "__main__":
    run_main(main, description=__doc__)
