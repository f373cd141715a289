"""The evaluate stage: every model (base, each mode's best checkpoint, the fused models) on every
benchmark of ``eval.benchmarks`` -> ``<run dir>/eval/models/<model>/done.json`` (each model's scores,
keyed by its weights file, the benchmarks, the model section, the batch size and the device) and
``<run dir>/eval.json`` gathering them, and ``<run dir>/eval/held_out_queries.json``: each model's
per-query metrics on the held-out retrieval benchmarks, for the report's paired test against the base.
A model with the same tensors as one already scored (a greedy soup of one) reuses its scores. On a
GPU run each model is scored in a Ray task holding a GPU."""

from __future__ import annotations

from pipeline import storage
from pipeline.config import Config
from pipeline.eval.benchmarks import run_benchmarks
from pipeline.fusion.stream import weights_digest
from pipeline.inference import inference_device, on_inference_device
from pipeline.model.encoder import Encoder
from pipeline.stage_cache import cached, input_hash, mark_done, weights_file_sha256

Results = dict[str, dict[str, float]]  # benchmark -> metric -> value
# held-out benchmark -> query id -> metric -> value
QueryScores = dict[str, dict[str, dict[str, float]]]


def results_path(run_dir: str) -> str:
    """``<run dir>/eval.json``."""
    return storage.join(run_dir, "eval.json")


def held_out_queries_path(run_dir: str) -> str:
    """``<run dir>/eval/held_out_queries.json``: model -> held-out benchmark -> query id -> metrics."""
    return storage.join(run_dir, "eval", "held_out_queries.json")


def models_to_score(
    cfg: Config, base: str, trained: dict[str, dict], selection: dict, chosen_folder: str
) -> dict[str, str]:
    """Name -> folder of the models the stage scores: ``base``, each trained mode's best checkpoint
    (``eval.trained_models``) and the fused models (all, or the chosen one: ``eval.fused_models``)."""
    fused = {f"fused:{m}": f for m, f in selection["folders"].items()}
    if cfg.eval.fused_models == "chosen":
        fused = {name: f for name, f in fused.items() if f == chosen_folder}
    modes = {m: d["best"] for m, d in trained.items()} if cfg.eval.trained_models else {}
    return {"base": base, **modes, **fused}


def evaluate_folder(cfg: Config, folder: str) -> Results:
    """One model folder on every benchmark of ``eval.benchmarks``, uncached; on a GPU run in a Ray
    task holding a GPU (see ``pipeline.inference``)."""
    return score_folder(cfg, folder)[0]


def score_folder(cfg: Config, folder: str) -> tuple[Results, QueryScores]:
    """:func:`evaluate_folder`'s scores and the per-query metrics of the held-out retrieval benchmarks."""
    return on_inference_device(cfg.train.use_gpu, _evaluate_here, cfg, folder)


def _evaluate_here(cfg: Config, folder: str) -> tuple[Results, QueryScores]:
    m = cfg.model
    encoder = Encoder.from_pretrained(
        storage.fetch(folder),
        pooling=m.pooling,
        normalize=m.normalize,
        device=inference_device(cfg.train.use_gpu),
        bf16=cfg.eval.bf16,
    )
    queries: QueryScores = {}
    results = run_benchmarks(
        encoder,
        cfg.eval.benchmarks,
        data_root=cfg.data.root,
        run_dir=cfg.run.dir,
        batch_size=cfg.eval.batch_size,
        sort_by_length=cfg.eval.sort_by_length,
        corpus_chunk=cfg.eval.corpus_chunk,
        text=m.text_settings(),
        held_out_queries=queries,
    )
    return results, queries


def run(cfg: Config, folders: dict[str, str]) -> dict[str, Results]:
    """Every model of ``folders`` on every configured benchmark (each cached by its key); writes and
    returns ``eval.json``: model -> benchmark -> metric, in the order of ``folders``. The fused models
    are scored first: the one to be registered is the result a user waits for, and a run stopped
    during this stage keeps its scores (each model's ``done.json``) for the restart."""
    results, queries, scored = {}, {}, {}
    benchmarks = [b.model_dump() for b in cfg.eval.benchmarks]
    for name in scoring_order(folders):
        folder = folders[name]
        out = storage.join(storage.absolute(cfg.run.dir), "eval", "models", name.replace(":", "-"))
        weights = weights_digest(storage.fetch(folder))  # the tensors, however they were written
        digest = input_hash(
            weights_file_sha256(folder),
            benchmarks,
            cfg.model.model_dump(),
            cfg.eval.batch_size,
            {"use_gpu": cfg.train.use_gpu, "bf16": cfg.eval.bf16},
        )
        done = cached(out, digest)
        if done is None and weights in scored:
            print(f"[pipeline] {name}: same weights as {scored[weights]}, reusing its scores")
            same = scored[weights]
            done = mark_done(
                out, digest, model=folder, results=results[same], held_out_queries=queries[same]
            )
        if done is None:
            print(f"[pipeline] evaluating {name} ({folder})")
            scores, per_query = score_folder(cfg, folder)
            done = mark_done(out, digest, model=folder, results=scores, held_out_queries=per_query)
        results[name] = done["results"]
        queries[name] = done.get("held_out_queries", {})  # absent in records of earlier versions
        scored.setdefault(weights, name)
    results = {name: results[name] for name in folders}
    storage.write_json(results_path(cfg.run.dir), results)
    storage.write_json(held_out_queries_path(cfg.run.dir), {n: queries[n] for n in folders})
    return results


def scoring_order(folders: dict[str, str]) -> list[str]:
    """The names of ``folders``, fused models first, the rest in their given order."""
    return sorted(folders, key=lambda name: not name.startswith("fused:"))
