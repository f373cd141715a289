"""The stages of the end-to-end job after data preparation: train every configured mode, fuse their
checkpoints (choosing on dev only), evaluate every model, register the chosen one, write the report.

Each stage takes the config, reads and writes named artifacts under the run directory, and is
skipped when its ``done.json`` records the same input hash (see ``pipeline.stage_cache``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from pipeline import storage
from pipeline.config import Config
from pipeline.eval.benchmarks import run_benchmarks
from pipeline.fusion.stream import check_finite, weights_digest
from pipeline.inference import inference_device, on_inference_device, precision_label
from pipeline.model.encoder import Encoder
from pipeline.model.loading import resolve_model_path
from pipeline.model.save import save_pretrained_st
from pipeline.stage_cache import cached, input_hash, mark_done
from pipeline.train.dev import evaluate_dev
from pipeline.train.state import META


def _weights_digest(folder: str) -> str:
    """The weights file's sha256: the cache key of the stages that read a model folder."""
    return storage.file_sha256(storage.join(folder, "model.safetensors"))


def recorded_dev_objective(folder: str, precision: str) -> float | None:
    """The dev objective training measured for a checkpoint folder (its ``train_state.json``), or None
    when it recorded none or measured it in another precision than ``precision`` (a label of
    :func:`pipeline.inference.precision_label`): such a score is not compared with this one's."""
    state = storage.join(folder, META)
    if not storage.exists(state):
        return None
    metrics = storage.read_json(state).get("metrics", {})
    value = metrics.get("dev_objective")
    if value is None or metrics.get("dev_precision") != precision:
        return None
    return float(value)


def _scoring_precision(use_gpu: bool, bf16: bool) -> str:
    return precision_label(inference_device(use_gpu), bf16)


def scoring_precision(cfg: Config) -> str:
    """The precision label of the fuse and evaluate stages' encodes, read where they run."""
    return on_inference_device(
        cfg.train.use_gpu, _scoring_precision, cfg.train.use_gpu, cfg.eval.bf16
    )


def base_folder(cfg: Config) -> str:
    """The pre-trained encoder θ_0 re-saved in this project's layout (same tensor names as every
    checkpoint, so fusion can pair them), truncating at ``model.max_length_passage`` as evaluation
    does: ``<run dir>/base``. Training workers load it from there (every node can read the run dir)."""
    out = storage.join(storage.absolute(cfg.run.dir), "base")
    source = resolve_model_path(
        cfg.model.name_or_path, cfg.model.tiny_layers, cfg.model.tiny_hidden
    )
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


def train_modes(
    cfg: Config, base_digest: str, modes: list[str] | None = None, *, train_missing: bool = True
) -> dict[str, dict]:
    """Train each of ``modes`` (default ``train.modes``), skipping finished ones; mode -> ``{"best",
    "final", "checkpoints"}`` (the best checkpoint by dev, the last one, every kept one). With
    ``train_missing=False`` a mode not trained with these settings is an error instead."""
    from pipeline.train.driver import train_mode, training_inputs_hash  # imports Ray Train

    trained = {}
    for mode in cfg.train.modes if modes is None else modes:
        out = storage.join(storage.absolute(cfg.run.dir), "train", mode)
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
            )
        else:
            print(f"[pipeline] train {mode}: inputs unchanged, reusing {done['best']}")
        trained[mode] = done
    return trained


def fusion_candidates(cfg: Config, trained: dict[str, dict]) -> dict[str, str]:
    """What ``fusion.candidates`` names: the best checkpoint of every mode (``modes``), every kept
    checkpoint of ``train.mode``'s run (``top_k``), the best trials of the sweep ``tune.name``
    (``tune_best_k``) or the folders of ``fusion.paths`` (``paths``, each named by its path)."""
    if cfg.fusion.candidates == "modes":
        modes = cfg.fusion.modes or list(trained)
        return {mode: trained[mode]["best"] for mode in modes}
    if cfg.fusion.candidates == "top_k":
        kept = trained[cfg.train.mode]["checkpoints"]
        return {f"{cfg.train.mode}:{os.path.basename(p)}": p for p in kept}
    if cfg.fusion.candidates == "paths":
        return {path: path for path in cfg.fusion.paths}
    best = storage.join(cfg.run.dir, "tune", cfg.tune.name, "best.json")
    if not storage.exists(best):
        raise FileNotFoundError(
            f"fusion.candidates=tune_best_k reads {best}: run `python -m tune.sweep` with the same "
            "config first"
        )
    return {f"tune:{t['trial']}": t["checkpoint"] for t in storage.read_json(best)["trials"]}


def dev_selection_scores(selection: dict, candidates: dict[str, str]) -> dict[str, float]:
    """Every model the fuse stage scored on dev, by name: the fusion variants as ``selection.json``
    names them, and each candidate (keyed by its folder there) as ``candidate <name>``."""
    name_of = {folder: name for name, folder in candidates.items()}
    scored = selection.get("candidate_scores", {})
    return {
        **selection["scores"],
        **{f"candidate {name_of.get(folder, folder)}": s for folder, s in scored.items()},
    }


def dev_evaluator(cfg: Config) -> Callable[[str], dict[str, float]]:
    """``folder -> dev metrics`` (STS and IR dev, ``dev_objective``; dev data only), the in-loop
    evaluation applied to a saved model."""
    from pipeline.train.driver import dev_data

    dev = dev_data(cfg)
    m = cfg.model

    def evaluate(folder: str) -> dict[str, float]:
        encoder = Encoder.from_pretrained(
            storage.fetch(folder), device=inference_device(cfg.train.use_gpu), bf16=cfg.eval.bf16
        )
        return evaluate_dev(
            encoder,
            dev,
            max_length_query=m.max_length_query,
            max_length_passage=m.max_length_passage,
            max_length_sts=m.max_length_sts,
            instruction_ir=m.instruction_ir,
            instruction_sts=m.instruction_sts,
            batch_size=cfg.eval.batch_size,
            objective=cfg.train.objective,
        )

    return evaluate


def dev_scores(cfg: Config, folder: str) -> dict[str, float]:
    """One model folder's dev metrics, on the inference device (a GPU task on a GPU run)."""
    return on_inference_device(cfg.train.use_gpu, dev_evaluator(cfg), folder)


def dev_scorer(cfg: Config) -> Callable[[str], float]:
    """``folder -> dev objective`` (``train.objective`` over STS and IR dev)."""
    evaluate = dev_evaluator(cfg)
    return lambda folder: evaluate(folder)["dev_objective"]


def fuse_checkpoints(
    cfg: Config, base: str, candidates: dict[str, str], out: str = ""
) -> tuple[dict, str]:
    """Fuse the candidates with every configured method as a Ray task into ``out`` (default
    ``<run dir>/fuse``), choosing on dev; returns ``selection.json`` and the chosen fused folder.

    A candidate trained in this run directory keeps the dev score its training recorded (same dev
    data and objective) when training measured it in this stage's precision, so only the fused
    models are scored here; ``fusion.paths`` folders may come from runs with other dev data, so they
    are scored again. On a GPU run the task holds a GPU and scores there."""
    import ray

    from pipeline.fusion.remote import fuse_and_select_remote

    out = out or storage.join(storage.absolute(cfg.run.dir), "fuse")
    digest = input_hash(
        _weights_digest(base),
        {name: _weights_digest(folder) for name, folder in sorted(candidates.items())},
        cfg.fusion.method_knobs(),
        [b.model_dump() for b in cfg.eval.benchmarks],
        cfg.train.dev_ir_pool,
        cfg.train.objective,
    )
    done = cached(out, digest)
    if done is None:
        precision = scoring_precision(cfg)
        recorded = {
            folder: recorded_dev_objective(folder, precision)
            for folder in candidates.values()
            if cfg.fusion.candidates != "paths"
        }
        gpus = 1 if cfg.train.use_gpu else 0
        best, _, folder = ray.get(
            fuse_and_select_remote.options(num_cpus=cfg.fusion.num_cpus, num_gpus=gpus).remote(
                base,
                list(candidates.values()),
                out,
                score_fn=dev_scorer(cfg),
                known_scores={f: s for f, s in recorded.items() if s is not None},
                **cfg.fusion.method_knobs(),
            )
        )
        done = mark_done(out, digest, best=best, folder=folder)
    selection = storage.read_json(storage.join(out, "selection.json"))
    return selection, done["folder"]


def evaluate_folder(cfg: Config, folder: str) -> dict[str, dict[str, float]]:
    """One model folder on every benchmark of ``eval.benchmarks``: benchmark -> metric -> value;
    on a GPU run in a Ray task holding a GPU (see ``pipeline.inference``)."""
    return on_inference_device(cfg.train.use_gpu, _evaluate_here, cfg, folder)


def _evaluate_here(cfg: Config, folder: str) -> dict[str, dict[str, float]]:
    m = cfg.model
    encoder = Encoder.from_pretrained(
        storage.fetch(folder),
        pooling=m.pooling,
        normalize=m.normalize,
        device=inference_device(cfg.train.use_gpu),
        bf16=cfg.eval.bf16,
    )
    return run_benchmarks(
        encoder,
        cfg.eval.benchmarks,
        data_root=cfg.data.root,
        run_dir=cfg.run.dir,
        batch_size=cfg.eval.batch_size,
        sort_by_length=cfg.eval.sort_by_length,
        corpus_chunk=cfg.eval.corpus_chunk,
        max_length_query=m.max_length_query,
        max_length_passage=m.max_length_passage,
        max_length_sts=m.max_length_sts,
        instruction_ir=m.instruction_ir,
        instruction_sts=m.instruction_sts,
    )


def evaluate_models(cfg: Config, folders: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
    """Every model on every configured benchmark: model -> benchmark -> metric (cached per weights;
    a model with the same weights as one already scored, e.g. a greedy soup of one, reuses its
    scores)."""
    results, scored = {}, {}
    benchmarks = [b.model_dump() for b in cfg.eval.benchmarks]
    m = cfg.model
    for name, folder in folders.items():
        out = storage.join(storage.absolute(cfg.run.dir), "eval", "models", name.replace(":", "-"))
        weights = weights_digest(storage.fetch(folder))  # the tensors, however they were written
        digest = input_hash(
            _weights_digest(folder),
            benchmarks,
            m.model_dump(),
            cfg.eval.batch_size,
            {"use_gpu": cfg.train.use_gpu, "bf16": cfg.eval.bf16},
        )
        done = cached(out, digest)
        if done is None and weights in scored:
            print(f"[pipeline] {name}: same weights as {scored[weights]}, reusing its scores")
            done = mark_done(out, digest, model=folder, results=results[scored[weights]])
        if done is None:
            print(f"[pipeline] evaluating {name} ({folder})")
            scores = evaluate_folder(cfg, folder)
            done = mark_done(out, digest, model=folder, results=scores)
        results[name] = done["results"]
        scored.setdefault(weights, name)
    return results


def publish_final(chosen_folder: str, run_dir: str) -> str:
    """Copy the chosen model to ``<run dir>/final`` (a sentence-transformers folder); a model with
    NaN/inf weights is refused (``NonFiniteWeights``) and never reaches the registry."""
    check_finite(storage.fetch(chosen_folder))
    final = storage.join(storage.absolute(run_dir), "final")
    storage.copy_dir(chosen_folder, final, skip=("done.json",))
    return final
