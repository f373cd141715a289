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
TRAINING_ONLY_FILES = (OPTIMIZER, "rng_rank*.pt")  # not needed to use the checkpoint as a model


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
    try:
        save_pretrained_st(encoder, staging)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            staging / OPTIMIZER,
        )
        (staging / META).write_text(json.dumps(asdict(position), indent=2, sort_keys=True))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():  # the old one moves aside first, so a crash here leaves it recoverable
        old = out_dir.with_name(f"{staging.name}.old")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
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
    return Position(**json.loads((ckpt_dir / META).read_text()))


def _rng_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rng_rank{rank:04d}.pt"


def save_rng_state(folder: str | Path, rank: int) -> None:
    """Write this worker's torch RNG state (dropout masks differ per worker, so each keeps its own)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, _rng_file(folder, rank))


def load_rng_state(folder: str | Path, rank: int) -> None:
    """Restore this worker's RNG state; a checkpoint from another world size has none for it."""
    path = _rng_file(folder, rank)
    if not path.is_file():
        return
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
