"""The fuse stage: the candidates (``fusion.candidates``) fused with every configured method as a Ray
task into ``<run dir>/fuse/``: ``<method>/`` (each method's best variant) and ``selection.json``
(every variant's dev objective), the method chosen on dev data only. Key: the base's and candidates'
weight files, the fusion knobs, the benchmarks, the dev pool and the dev objective."""

from __future__ import annotations

import os
from collections.abc import Callable

from pipeline import storage
from pipeline.config import Config
from pipeline.inference import inference_device, on_inference_device, precision_label
from pipeline.model.encoder import Encoder
from pipeline.stage_cache import cached, input_hash, mark_done, weights_file_sha256
from pipeline.train.dev import evaluate_dev
from pipeline.train.state import META


def out_dir(run_dir: str) -> str:
    """``<run dir>/fuse``."""
    return storage.join(storage.absolute(run_dir), "fuse")


def modes_to_read(cfg: Config) -> list[str]:
    """The trained modes ``fusion.candidates`` draws on (none for tune trials and paths)."""
    if cfg.fusion.candidates == "modes":
        return cfg.fusion.modes or cfg.train.modes
    if cfg.fusion.candidates == "top_k":
        return [cfg.train.mode]
    return []


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


def dev_evaluator(cfg: Config) -> Callable[[str], dict[str, float]]:
    """``folder -> dev metrics`` (STS and IR dev, ``dev_objective``; dev data only), the in-loop
    evaluation applied to a saved model."""
    from pipeline.train.driver import dev_data

    dev = dev_data(cfg)
    text = cfg.model.text_settings()

    def evaluate(folder: str) -> dict[str, float]:
        encoder = Encoder.from_pretrained(
            storage.fetch(folder), device=inference_device(cfg.train.use_gpu), bf16=cfg.eval.bf16
        )
        return evaluate_dev(
            encoder, dev, text, batch_size=cfg.eval.batch_size, objective=cfg.train.objective
        )

    return evaluate


def dev_scores(cfg: Config, folder: str) -> dict[str, float]:
    """One model folder's dev metrics, on the inference device (a GPU task on a GPU run)."""
    return on_inference_device(cfg.train.use_gpu, dev_evaluator(cfg), folder)


def dev_scorer(cfg: Config) -> Callable[[str], float]:
    """``folder -> dev objective`` (``train.objective`` over STS and IR dev)."""
    evaluate = dev_evaluator(cfg)
    return lambda folder: evaluate(folder)["dev_objective"]


def run(cfg: Config, base: str, candidates: dict[str, str], out: str = "") -> tuple[dict, str]:
    """Fuse the candidates with every configured method as a Ray task into ``out`` (default
    ``<run dir>/fuse``), choosing on dev; returns ``selection.json`` and the chosen fused folder.

    A candidate trained in this run directory keeps the dev score its training recorded (same dev
    data and objective) when training measured it in this stage's precision, so only the fused
    models are scored here; ``fusion.paths`` folders may come from runs with other dev data, so they
    are scored again. On a GPU run the task holds a GPU and scores there."""
    import ray

    from pipeline.fusion.remote import fuse_and_select_remote

    out = out or out_dir(cfg.run.dir)
    digest = input_hash(
        weights_file_sha256(base),
        {name: weights_file_sha256(folder) for name, folder in sorted(candidates.items())},
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


def chosen_name(selection: dict, chosen_folder: str) -> str:
    """The chosen fused model's name in the evaluate stage and the report: ``fused:<method>``."""
    return next(f"fused:{m}" for m, f in selection["folders"].items() if f == chosen_folder)


def dev_selection_scores(selection: dict, candidates: dict[str, str]) -> dict[str, float]:
    """Every model the fuse stage scored on dev, by name: the fusion variants as ``selection.json``
    names them, and each candidate (keyed by its folder there) as ``candidate <name>``."""
    name_of = {folder: name for name, folder in candidates.items()}
    scored = selection.get("candidate_scores", {})
    return {
        **selection["scores"],
        **{f"candidate {name_of.get(folder, folder)}": s for folder, s in scored.items()},
    }
