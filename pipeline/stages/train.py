"""The train stage: every mode of ``train.modes`` with Ray Train -> ``<run dir>/train/<mode>/``
(``best/``, ``final/``, ``metrics.jsonl``; Ray Train's checkpoints under ``<run dir>/ray/``), from the
base encoder θ_0 re-saved as ``<run dir>/base/``. Key of a mode: the prepare and mine stages' keys,
the model, loss, sampler and train settings, the seed, and the base weights."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from pipeline import storage
from pipeline.config import Config
from pipeline.model.encoder import Encoder
from pipeline.model.save import save_pretrained_st
from pipeline.stage_cache import (
    cached,
    input_hash,
    mark_done,
    recorded_hash,
    weights_file_sha256,
)
from pipeline.stages import mine, prepare

if TYPE_CHECKING:
    from pipeline.train.driver import TrainOutcome


def mode_dir(run_dir: str, mode: str) -> str:
    """``<run dir>/train/<mode>``."""
    return storage.join(storage.absolute(run_dir), "train", mode)


def base_model(cfg: Config) -> str:
    """The pre-trained encoder θ_0 re-saved in this project's layout (same tensor names as every
    checkpoint, so fusion can pair them), truncating at ``model.max_length_passage`` as evaluation
    does: ``<run dir>/base``. Training workers load it from there (every node can read the run dir)."""
    out = storage.join(storage.absolute(cfg.run.dir), "base")
    source = cfg.model.resolved_path()
    m = cfg.model
    digest = input_hash(source, m.pooling, m.normalize, m.max_length_passage)
    if cached(out, digest) is None:
        encoder = Encoder.from_pretrained(  # fused models copy its files: they truncate alike
            source,
            pooling=m.pooling,
            normalize=m.normalize,
            device="cpu",
            max_seq_length=m.max_length_passage,
        )
        built = storage.build_dir(out)
        shutil.rmtree(built, ignore_errors=True)
        save_pretrained_st(encoder, built)
        storage.publish_dir(built, out)
        mark_done(out, digest, source=source)
    return out


def training_inputs_hash(cfg: Config, mode: str) -> str:
    """sha256 of what decides a mode's training: the prepared and mined data (their stages' keys),
    the model, loss, sampler and train settings, the seed."""
    run_dir = cfg.run.dir
    return input_hash(
        mode,
        recorded_hash(mine.out_dir(run_dir), "run `python -m jobs.mine` first"),
        recorded_hash(prepare.out_dir(run_dir), "run `python -m jobs.prepare` first"),
        cfg.model.model_dump(),
        cfg.loss.model_dump(),
        cfg.sampler.model_dump(),
        cfg.train.model_dump(exclude={"modes", "mode"}),
        cfg.run.seed,
    )


def ray_run_name(cfg: Config, mode: str) -> str:
    """Ray Train's run folder under ``<run dir>/ray``: ``<run>-<mode>-<8 hex of the training
    inputs>``. A job started again with the same settings resumes its checkpoints; one with changed
    settings starts a new run instead of resuming the old settings' checkpoints."""
    return f"{cfg.run.name}-{mode}-{training_inputs_hash(cfg, mode)[:8]}"


def train_mode(cfg: Config, mode: str) -> TrainOutcome:
    """Train ``mode`` once, uncached (resuming its Ray Train run's latest checkpoint); returns the
    driver's ``TrainOutcome``."""
    from pipeline.train.driver import train_mode as fit_mode  # imports Ray Train

    return fit_mode(cfg, mode, base_model=base_model(cfg), run_name=ray_run_name(cfg, mode))


def run(
    cfg: Config, modes: list[str] | None = None, *, train_missing: bool = True
) -> dict[str, dict]:
    """Train each of ``modes`` (default ``train.modes``), skipping finished ones; mode -> ``{"best",
    "final", "checkpoints", "metrics", "steps"}`` (the best checkpoint by dev, the last one, every
    kept one, the step log). With ``train_missing=False`` a mode not trained with these settings is
    an error instead."""
    base_digest = weights_file_sha256(base_model(cfg))
    trained = {}
    for mode in cfg.train.modes if modes is None else modes:
        out = mode_dir(cfg.run.dir, mode)
        digest = input_hash(training_inputs_hash(cfg, mode), base_digest)
        done = cached(out, digest)
        if done is None and not train_missing:
            raise FileNotFoundError(
                f"{out}: no finished {mode} training with these settings; run "
                f"`python -m jobs.pipeline` with the same config first"
            )
        if done is None:
            outcome = train_mode(cfg, mode)
            done = mark_done(
                out,
                digest,
                best=outcome.best_model,
                final=outcome.final_model,
                checkpoints=[path for path, _ in outcome.checkpoints],
                metrics=outcome.metrics_path,
                steps=outcome.steps,
            )
        else:
            print(f"[pipeline] train {mode}: inputs unchanged, reusing {done['best']}")
        trained[mode] = done
    return trained
