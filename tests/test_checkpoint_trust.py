"""Checkpoints are trustworthy: a pickled payload planted in a checkpoint is refused (every torch.load
uses ``weights_only=True``, weights are safetensors), and a crash while writing a checkpoint leaves the
previous one complete."""

from __future__ import annotations

import pathlib
import pickle

import pytest
import torch

from pipeline.model.encoder import Encoder
from pipeline.train import state
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.state import Position, load_rng_state, load_training_state, save_training_state


class _Payload:
    """Unpickling this creates ``marker``: code run by the loader, which must never happen."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _trainer(path: str):
    encoder = Encoder.from_pretrained(path, pooling="mean", device="cpu")
    optimizer = build_optimizer(encoder, lr=1e-3)
    return encoder, optimizer, build_scheduler(optimizer, total_steps=4, warmup_ratio=0.0)


def _save(folder, trainer, step: int):
    encoder, optimizer, scheduler = trainer
    return save_training_state(
        folder, encoder=encoder, optimizer=optimizer, scheduler=scheduler, position=Position(step)
    )


def test_pickle_payload_in_optimizer_state_is_refused(tiny_model_path, tmp_path):
    trainer = _trainer(tiny_model_path)
    ckpt = _save(tmp_path / "ckpt", trainer, step=2)
    marker = tmp_path / "payload-ran"
    torch.save({"optimizer": _Payload(marker), "scheduler": {}}, ckpt / state.OPTIMIZER)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_training_state(ckpt, encoder=trainer[0], optimizer=trainer[1], scheduler=trainer[2])
    assert not marker.exists()


def test_pickle_payload_in_rng_state_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"cpu": _Payload(marker)}, tmp_path / "rng_rank0000.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_rng_state(tmp_path, rank=0)
    assert not marker.exists()


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    tiny_model_path, tmp_path, monkeypatch
):
    trainer = _trainer(tiny_model_path)
    ckpt = _save(tmp_path / "ckpt", trainer, step=2)
    before = sorted(p.name for p in ckpt.iterdir())

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(state.torch, "save", crash)  # dies after the weights, before the rest
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "ckpt", trainer, step=4)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpt.iterdir()) == before
    fresh = _trainer(tiny_model_path)
    position = load_training_state(ckpt, encoder=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert position.step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "staging folders must not be left"
