"""The training step without Ray (one process, plain torch): the path benchmarks and the GPU machine
use. IR, STS and mixed steps on real records fit a repeated batch, and checkpoints round-trip."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from pipeline.config import SourceConfig
from pipeline.data.batches import collate_ir, collate_sts
from pipeline.data.ray_datasets import tokenize_ir, tokenize_sts
from pipeline.data.readers import read_source
from pipeline.model.encoder import Encoder
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.state import Position, load_training_state, save_training_state
from pipeline.train.step import LossSettings, batch_size_and_tokens, train_step


@pytest.fixture(scope="module")
def batches(data_root, tiny_model_path):
    """One real IR micro-batch (SciFact queries with their positives, fake negatives) and one STS one."""
    ir = read_source(
        SourceConfig(name="scifact", task="ir", format="beir", path="scifact-beir", limit=8),
        str(data_root),
    ).table
    others = ir.column("positives").to_pylist()
    negatives = [
        others[(i + 1) % len(others)] + others[(i + 2) % len(others)] for i in range(len(others))
    ]
    ir = ir.set_column(ir.schema.get_field_index("negatives"), "negatives", pa.array(negatives))
    sts = read_source(
        SourceConfig(
            name="stsb", task="sts", format="stsb", path="stsbenchmark/sts-train.csv", limit=16
        ),
        str(data_root),
    ).table
    lengths = {"max_length_query": 32, "max_length_passage": 48}
    ir_batch = collate_ir(tokenize_ir(ir, tokenizer_path=tiny_model_path, **lengths), pad_id=0)
    sts_batch = collate_sts(
        tokenize_sts(sts, tokenizer_path=tiny_model_path, max_length=32), pad_id=0
    )
    return {"ir": ir_batch, "sts": sts_batch, "mixed": {"ir": ir_batch, "sts": sts_batch}}


def _trainer(path: str, steps: int):
    torch.manual_seed(0)
    encoder = Encoder.from_pretrained(path, pooling="mean", device="cpu")
    optimizer = build_optimizer(encoder, lr=1e-3)
    scheduler = build_scheduler(optimizer, total_steps=steps, warmup_ratio=0.0)
    return encoder, optimizer, scheduler


def _step(encoder, optimizer, scheduler, task, batch, bucket_rows: int = 16):
    return train_step(
        encoder,
        optimizer,
        scheduler,
        task,
        batch,
        settings=LossSettings(),
        grad_clip=1.0,
        device=torch.device("cpu"),
        dim=encoder.dim,
        bucket_rows=bucket_rows,
    )


@pytest.mark.parametrize("task", ["ir", "sts", "mixed"])
def test_plain_torch_step_fits_a_repeated_batch(batches, tiny_model_path, task):
    encoder, optimizer, scheduler = _trainer(tiny_model_path, steps=100)
    losses = [_step(encoder, optimizer, scheduler, task, batches[task])["loss"] for _ in range(15)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    metrics = _step(encoder, optimizer, scheduler, task, batches[task])
    expected = {"loss", "lr", "grad_norm", "tokens", "pairs_per_s", "tokens_per_s"}
    expected |= {"loss_ir"} if task != "sts" else set()
    expected |= {"loss_sts", "pearson", "rankkl", "pro", "midnce"} if task != "ir" else set()
    assert expected <= set(metrics)
    assert metrics["tokens"] == batch_size_and_tokens(task, batches[task])[1]


def test_checkpoint_round_trip_continues_identically(batches, tiny_model_path, tmp_path):
    """Stop after 3 steps, restore into fresh objects, run 3 more: equal to 6 uninterrupted steps."""
    plan = ["ir", "sts", "ir", "sts", "sts", "ir"]
    ref = _trainer(tiny_model_path, steps=len(plan))
    for task in plan:
        _step(*ref, task, batches[task])

    first = _trainer(tiny_model_path, steps=len(plan))
    for task in plan[:3]:
        _step(*first, task, batches[task])
    rng = torch.get_rng_state()
    save_training_state(
        tmp_path / "ckpt",
        encoder=first[0],
        optimizer=first[1],
        scheduler=first[2],
        position=Position(step=3),
    )
    resumed = _trainer(tiny_model_path, steps=len(plan))
    position = load_training_state(
        tmp_path / "ckpt", encoder=resumed[0], optimizer=resumed[1], scheduler=resumed[2]
    )
    torch.set_rng_state(rng)  # in the Ray loop each worker restores its own from the checkpoint
    assert position.step == 3
    for task in plan[3:]:
        _step(*resumed, task, batches[task])
    for (name, a), b in zip(ref[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name


def test_gradient_checkpointing_gives_the_same_step(batches, tiny_model_path):
    """Recomputing activations in the backward pass changes memory, not the update."""
    updated = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = Encoder.from_pretrained(
            tiny_model_path, gradient_checkpointing=checkpointing, device="cpu"
        )
        layers_checkpointed = any(
            getattr(m, "gradient_checkpointing", False) for m in encoder.backbone.modules()
        )
        assert layers_checkpointed == checkpointing
        optimizer = build_optimizer(encoder, lr=1e-3)
        scheduler = build_scheduler(optimizer, total_steps=1, warmup_ratio=0.0)
        _step(encoder, optimizer, scheduler, "ir", batches["ir"])
        updated.append(encoder.state_dict())
    for name, value in updated[0].items():
        assert torch.allclose(value, updated[1][name], atol=1e-6), name


@pytest.mark.parametrize("task", ["ir", "sts", "mixed"])
def test_length_buckets_give_the_padded_step(batches, tiny_model_path, task):
    """With every encoder pass in buckets of 4 rows, a step's loss and clipped gradients equal those of
    single padded passes, and so does the next step's loss (dropout off: its masks are drawn per
    tensor shape). Weights are not compared: Adam turns float noise in a near-zero gradient into a
    full-size update of either sign."""
    from test_length_buckets import without_dropout

    runs = []
    for rows in (0, 4):
        encoder, optimizer, scheduler = _trainer(tiny_model_path, steps=2)
        without_dropout(encoder)
        first = _step(encoder, optimizer, scheduler, task, batches[task], bucket_rows=rows)
        grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
        second = _step(encoder, optimizer, scheduler, task, batches[task], bucket_rows=rows)
        runs.append(([first["loss"], second["loss"]], grads))
    (padded_losses, padded_grads), (bucketed_losses, bucketed_grads) = runs
    assert bucketed_losses == pytest.approx(padded_losses, rel=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(bucketed_grads[name], grad, atol=1e-6, rtol=1e-3)


def test_loss_settings_mirror_the_loss_section():
    """``LossSettings`` (the torch-only step's value object: it runs where pydantic is not installed)
    has the fields and defaults of the config's ``loss`` section, which fills it."""
    from dataclasses import asdict

    from pipeline.config import LossConfig

    assert asdict(LossSettings()) == LossConfig().model_dump()
