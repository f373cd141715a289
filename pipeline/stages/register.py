"""The register stage: the chosen fused model copied to ``<run dir>/final/`` (a sentence-transformers
folder; NaN/inf weights refused), logged as an MLflow pyfunc model and registered; the ``champion``
alias moves only when its dev objective beats the current champion's. Not cached: every run records
its own registry version, and the champion rule decides again."""

from __future__ import annotations

from pipeline import storage
from pipeline.config import Config
from pipeline.fusion.stream import check_finite
from pipeline.tracking import RegistrationResult, register_model

INPUT_EXAMPLE = ["A man is playing a guitar.", "What causes ocean tides?"]


def publish_final(chosen_folder: str, run_dir: str) -> str:
    """Copy the chosen model to ``<run dir>/final`` (a sentence-transformers folder); a model with
    NaN/inf weights is refused (``NonFiniteWeights``) and never reaches the registry."""
    check_finite(storage.fetch(chosen_folder))
    final = storage.join(storage.absolute(run_dir), "final")
    storage.copy_dir(chosen_folder, final, skip=("done.json",))
    return final


def run(
    cfg: Config, chosen_folder: str, selection: dict, uri: str
) -> tuple[str, RegistrationResult]:
    """Publish ``chosen_folder`` as ``final/`` and register it in the MLflow store ``uri`` with its
    dev objective from ``selection``; returns (the final folder, the registration)."""
    final = publish_final(chosen_folder, cfg.run.dir)
    registration = register_model(
        storage.fetch(final),
        uri=uri,
        name=cfg.tracking.registered_model,
        dev_objective=selection["scores"][selection["best"]],
        input_example=INPUT_EXAMPLE,
        experiment=cfg.tracking.experiment,
    )
    print(f"[pipeline] {registration.message}")
    return final, registration
