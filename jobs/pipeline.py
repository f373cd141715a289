"""The main job: raw data to a registered, fused model and its report.

    python -m jobs.pipeline --config configs/demo.yaml                 (what `make demo` runs)
    python -m jobs.pipeline --config configs/reproduce.yaml            (what `make reproduce` runs)
    ray job submit --working-dir . -- python -m jobs.pipeline --config configs/smoke.yaml

prepare -> mine -> train every mode in ``train.modes`` -> fuse (chosen on dev) -> evaluate every
model -> register the chosen one in MLflow (alias ``champion`` only if it beats the current one on
dev) -> ``report.md`` + ``tradeoff.png``. Finished stages are skipped by their input hashes, so a
killed job started again with the same run name picks up where it stopped.
"""

from __future__ import annotations

import time

import ray

from pipeline import storage
from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.data.mining_stage import run_mining
from pipeline.data.prepare import prepare_sources
from pipeline.end_to_end import (
    base_folder,
    dev_selection_scores,
    evaluate_models,
    fuse_checkpoints,
    fusion_candidates,
    publish_final,
    train_modes,
)
from pipeline.report import write_report
from pipeline.report.summary import run_summary
from pipeline.report.training import dev_only_note, plot_dev_curves, training_notes
from pipeline.stage_cache import StageClock
from pipeline.tracking import (
    TrackingUnavailable,
    log_artifact,
    log_dict,
    pipeline_run,
    register_model,
    resolve_tracking_uri,
    stage_run,
    tracking_or_offline,
)
from pipeline.tracking.metrics import log_training_metrics


def main(cfg: Config) -> dict:
    started = time.monotonic()
    run_dir = cfg.run.dir
    uri = resolve_tracking_uri(cfg.tracking.uri, run_dir)
    # fail fast, before any training; with tracking.required=false track offline instead
    uri = tracking_or_offline(uri, cfg)
    ray.init(ignore_reinit_error=True)
    clock = StageClock()
    with pipeline_run(uri, cfg.tracking.experiment, cfg.run.name, cfg.model_dump(mode="json")):
        with clock.stage("prepare"), stage_run("prepare"):
            prepared = storage.join(run_dir, "prepared")
            prepare_sources(cfg.data.sources, cfg.data.root, prepared, cfg.data.max_bad_fraction)
            log_artifact(storage.join(prepared, "manifest.json"))
        with clock.stage("mine"), stage_run("mine"):
            run_mining(cfg)
            log_artifact(storage.join(run_dir, "mined", "stats.json"))
        with clock.stage("train"), stage_run("train"):
            base = base_folder(cfg)
            trained = train_modes(cfg, storage.file_sha256(storage.join(base, "model.safetensors")))
            for mode, done in trained.items():
                log_training_metrics(done["metrics"], prefix=f"{mode}/")
        with clock.stage("fuse"), stage_run("fuse"):
            candidates = fusion_candidates(cfg, trained)
            selection, chosen_folder = fuse_checkpoints(cfg, base, candidates)
            log_dict(selection, "fuse/selection.json")
        fused = {f"fused:{m}": f for m, f in selection["folders"].items()}
        chosen = next(n for n, f in fused.items() if f == chosen_folder)
        if cfg.eval.fused_models == "chosen":
            fused = {chosen: chosen_folder}
        modes = {m: d["best"] for m, d in trained.items()} if cfg.eval.trained_models else {}
        folders = {"base": base, **modes, **fused}
        with clock.stage("evaluate"), stage_run("evaluate"):
            results = evaluate_models(cfg, folders)
            storage.write_json(storage.join(run_dir, "eval.json"), results)
            log_dict(results, "eval.json")
        with clock.stage("register"), stage_run("register"):
            final = publish_final(chosen_folder, run_dir)
            registration = register_model(
                storage.fetch(final),
                uri=uri,
                name=cfg.tracking.registered_model,
                dev_objective=selection["scores"][selection["best"]],
                input_example=["A man is playing a guitar.", "What causes ocean tides?"],
                experiment=cfg.tracking.experiment,
            )
            print(f"[pipeline] {registration.message}")
        with clock.stage("report"), stage_run("report"):
            paths = write_report(
                run_dir,
                results,
                chosen=chosen,
                dev_selection=dev_selection_scores(selection, candidates),
                stage_times=clock.times,
                notes=[
                    *training_notes({m: d["metrics"] for m, d in trained.items()}),
                    *dev_only_note(list(trained), cfg.eval.trained_models),
                    f"Registered: {registration.message}.",
                ],
                title=f"CoDiEmb on Ray — run {cfg.run.name}",
                held_out={b.name: b.kind for b in cfg.eval.benchmarks if b.held_out},
                held_out_tolerance=cfg.eval.held_out_tolerance,
            )
            paths["dev_curves"] = storage.join(run_dir, "dev_curves.png")
            plot_dev_curves({m: d["metrics"] for m, d in trained.items()}, paths["dev_curves"])
            for path in paths.values():
                log_artifact(path)
    print(
        run_summary(
            run_name=cfg.run.name,
            seconds=time.monotonic() - started,
            report=paths["report"],
            final=final,
            registry=registration.message,
            results=results,
            registered=chosen,
            kinds={b.name: b.kind for b in cfg.eval.benchmarks},
        ),
        flush=True,
    )
    return {"results": results, "chosen": chosen, "final": final, "times": clock.times}


if __name__ == "__main__":
    run_main(main, description=__doc__, known=(TrackingUnavailable,))
