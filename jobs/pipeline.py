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
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import ray

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.report.summary import run_summary
from pipeline.stage_cache import StageClock
from pipeline.stages import evaluate, fuse, prepare_and_mine, register, report, train
from pipeline.tracking import (
    TrackingUnavailable,
    log_artifact,
    log_dict,
    pipeline_run,
    resolve_tracking_uri,
    stage_run,
    tracking_or_offline,
)
from pipeline.tracking.metrics import log_training_metrics


@contextmanager
def tracked_stage(clock: StageClock, name: str, record: str = "") -> Iterator[None]:
    """One stage of the main job: its console lines and time, its nested MLflow run, and its record
    file (``record``) logged there."""
    with clock.stage(name), stage_run(name):
        yield
        if record:
            log_artifact(record)


def main(cfg: Config) -> dict:
    started = time.monotonic()
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.dir)
    # fail fast, before any training; with tracking.required=false track offline instead
    uri = tracking_or_offline(uri, cfg)
    ray.init(ignore_reinit_error=True)
    clock = StageClock()
    with pipeline_run(uri, cfg.tracking.experiment, cfg.run.name, cfg.model_dump(mode="json")):
        prepare_and_mine(cfg, partial(tracked_stage, clock))
        with tracked_stage(clock, "train"):
            base = train.base_model(cfg)
            trained = train.run(cfg)
            for mode, done in trained.items():
                log_training_metrics(done["metrics"], prefix=f"{mode}/")
        with tracked_stage(clock, "fuse"):
            candidates = fuse.fusion_candidates(cfg, trained)
            selection, chosen_folder = fuse.run(cfg, base, candidates)
            log_dict(selection, "fuse/selection.json")
        chosen = fuse.chosen_name(selection, chosen_folder)
        with tracked_stage(clock, "evaluate"):
            folders = evaluate.models_to_score(cfg, base, trained, selection, chosen_folder)
            results = evaluate.run(cfg, folders)
            log_dict(results, "eval.json")
        with tracked_stage(clock, "register"):
            final, registration = register.run(cfg, chosen_folder, selection, uri)
        with tracked_stage(clock, "report"):
            paths = report.run(
                cfg,
                results,
                chosen=chosen,
                dev_selection=fuse.dev_selection_scores(selection, candidates),
                trained=trained,
                stage_times=clock.times,
                registered=registration.message,
            )
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
