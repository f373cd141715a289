"""The Ray Train loop end to end on the smoke preset (tiny random models, real data slices):
a worker fault resumes from the last checkpoint to the same result as an uninterrupted run, and
encoder / decoder models with every pooling train through the same loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from jobs import mine, prepare
from pipeline.config import load_config
from pipeline.model.encoder import Encoder
from pipeline.model.loading import resolve_model_path
from pipeline.stages.train import train_mode


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory, ray_session):
    """Prepared and mined smoke data, shared by every run of this module (each its own run name)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("smoke", [f"run.root={root}", "run.name=data"])
    prepare.main(cfg)
    mine.main(cfg)
    return root


def _config(root, name: str, *overrides: str):
    cfg = load_config("smoke", [f"run.root={root}", f"run.name={name}", *overrides])
    data_dir = root / "data"  # every run reads the same prepared + mined data
    for stage in ("prepared", "mined"):
        link = root / name / stage
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(data_dir / stage)
    return cfg


def _metrics(path: str) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_worker_fault_resumes_from_checkpoint_like_an_uninterrupted_run(smoke_root):
    # scored checkpoints at 4 and 8, unscored ones (checkpoint_every) at 3 and 6: the fault at the
    # start of step 7 resumes from the unscored step-6 checkpoint
    steps = ["train.max_steps=8", "train.eval_every=4", "train.checkpoint_every=3"]
    steps += ["train.keep_top_k=3"]
    clean = train_mode(_config(smoke_root, "clean", *steps), "joint")
    faulty = train_mode(
        _config(smoke_root, "faulty", *steps, "debug.fail_at_step=6", "train.max_failures=1"),
        "joint",
    )
    assert (smoke_root / "faulty" / "train" / "joint" / ".fault_fired").exists()  # it did crash
    assert clean.steps == faulty.steps == 8

    clean_log, faulty_log = _metrics(clean.metrics_path), _metrics(faulty.metrics_path)
    assert [r["step"] for r in faulty_log] == list(range(1, 9))
    # every worker's real tokens per step (rank 0's first): how evenly the step's work was split
    assert all(len(r["tokens_workers"]) == 2 for r in clean_log)
    assert all(r["tokens_workers"][0] == r["tokens"] > 0 for r in clean_log)
    assert any(r["tokens_workers"][1] != r["tokens"] for r in clean_log)  # rank 1's own count
    checkpointed = {r["step"]: "dev_objective" in r for r in clean_log if "checkpoint" in r}
    assert checkpointed == {3: False, 4: True, 6: False, 8: True}
    assert all("dev_objective" in m for _, m in faulty.checkpoints)  # only ranked ones are kept
    # the schedule position survived the restart: same task and learning rate at every step
    assert [(r["task"], r["lr"]) for r in faulty_log] == [(r["task"], r["lr"]) for r in clean_log]
    for a, b in zip(clean_log, faulty_log):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)

    clean_w = load_file(f"{clean.final_model}/model.safetensors")
    faulty_w = load_file(f"{faulty.final_model}/model.safetensors")
    worst = max(float((clean_w[k] - faulty_w[k]).abs().max()) for k in clean_w)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"
    assert clean_log[-1]["dev_mean"] == pytest.approx(faulty_log[-1]["dev_mean"], abs=1e-4)


@pytest.mark.parametrize(
    ("model", "pooling"), [("tiny-random-decoder", "last_token"), ("tiny-random", "cls")]
)
def test_encoder_and_decoder_models_train_through_the_ray_loop(smoke_root, model, pooling):
    name = f"arch-{pooling}"
    cfg = _config(
        smoke_root,
        name,
        f"model.name_or_path={model}",
        f"model.pooling={pooling}",
        "train.max_steps=4",
    )
    outcome = train_mode(cfg, "joint")
    log = _metrics(outcome.metrics_path)
    assert outcome.steps == 4
    assert {r["task"] for r in log} == {"ir", "sts"}
    assert all(math.isfinite(r["loss"]) for r in log)

    trained = Encoder.from_pretrained(outcome.final_model)
    assert trained.pooling == pooling
    start = Encoder.from_pretrained(resolve_model_path(model), pooling=pooling)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            start.backbone.state_dict().values(), trained.backbone.state_dict().values()
        )
    ]
    assert any(moved), "no parameter changed"
    texts = ["a cat sits on the mat", "retrieval of scientific claims"]
    assert trained.encode(texts, max_length=16).shape == (2, trained.dim)


def test_one_source_per_batch_trains_each_ir_step_on_one_source(tmp_path_factory, ray_session):
    """``sampler.one_source_per_batch`` through the driver and the Ray loop: with SciFact and SNLI
    as IR sources every IR step's micro-batch comes from one of them, and both are trained on."""
    root = tmp_path_factory.mktemp("by-source")
    sources = (
        "data.sources=[{name: stsb, task: sts, format: stsb, path: stsbenchmark/sts-train.csv, "
        "limit: 64}, {name: scifact, task: ir, format: beir, path: scifact-beir, split: train, "
        "limit: 40}, {name: snli, task: ir, format: snli, path: snli-devtest-senteval, "
        "split: dev, limit: 16}]"
    )
    cfg = load_config(
        "smoke",
        [f"run.root={root}", "run.name=by-source", sources, "sampler.one_source_per_batch=true"],
    )
    prepare.main(cfg)
    mine.main(cfg)
    outcome = train_mode(cfg, "ir_only")
    log = _metrics(outcome.metrics_path)
    # (40 - 16 dev queries) / 8 = 3 SciFact batches and 16 / 8 = 2 SNLI batches: 5 steps
    assert outcome.steps == len(log) == 5
    assert sorted(r["ir_sources"] for r in log) == ["scifact"] * 3 + ["snli"] * 2
