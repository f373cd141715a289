"""Training checkpoints: a sentence-transformers folder (safetensors weights, usable as a model as it
is) plus the optimizer/scheduler/RNG state (loaded with ``weights_only=True``) and the schedule
position — written atomically (complete or absent)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipeline.model.encoder import Encoder
from pipeline.model.save import save_pretrained_st

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
META = "train_state.json"


@dataclass
class Position:
    """Where training stands: the next global step to run and the metrics at the last report."""

    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def save_training_state(
    out_dir: str | Path,
    *,
    encoder: Encoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: Position,
) -> Path:
    """Write a resumable checkpoint to ``out_dir`` (staged in a sibling temp folder, then renamed)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    save_pretrained_st(encoder, staging)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        staging / OPTIMIZER,
    )
    (staging / META).write_text(json.dumps(asdict(position), indent=2, sort_keys=True))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir


def load_training_state(
    ckpt_dir: str | Path,
    *,
    encoder: Encoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Position:
    """Restore model, optimizer, scheduler and RNG from ``ckpt_dir``; return the saved position."""
    ckpt_dir = Path(ckpt_dir)
    weights = load_file(str(ckpt_dir / WEIGHTS), device=str(encoder.device))
    encoder.backbone.load_state_dict(weights, strict=True)
    state = torch.load(ckpt_dir / OPTIMIZER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Position(**json.loads((ckpt_dir / META).read_text()))
