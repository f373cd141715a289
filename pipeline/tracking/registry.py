"""Log the final encoder as an MLflow pyfunc model, register it, and move the ``champion`` alias
only when the new version beats the current champion on the dev objective (higher is better).

The comparison is recorded as tags on the new version. A failure anywhere raises
``RegistrationFailed`` whose message says where the trained model is on disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo
from transformers import AutoConfig

import pipeline
from pipeline.model.st_settings import read_st_settings
from pipeline.tracking import pyfunc
from pipeline.tracking.mlflow_run import ensure_experiment, redact, use_tracking

CHAMPION = "champion"
# What the logged model needs at load time (pinned to this environment's versions, so loading
# never infers or installs anything); the project's own code travels in the model's code/ folder.
REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
)
TAG_OBJECTIVE = "dev_objective"
# The version tags apply_champion_rule writes (the comparison with the champion of its registry).
DECISION_TAGS = frozenset(
    {
        TAG_OBJECTIVE,
        "champion_decision",
        "champion_reason",
        "model_dir",
        "previous_champion_version",
        "previous_champion_dev_objective",
    }
)


class RegistrationFailed(RuntimeError):
    """Logging or registering the model failed; the message says where the model is on disk."""


@dataclass(frozen=True)
class RegistrationResult:
    version: str
    is_champion: bool
    previous_champion: str | None  # the champion's version before this registration
    message: str


def pip_requirements() -> list[str]:
    """``pkg==version`` of the packages the pyfunc imports (local build tags such as +cpu dropped)."""
    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_encoder(
    model_dir: str,
    *,
    name: str,
    input_example: Sequence[str],
    max_length: int | None = None,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the sentence-transformers folder ``model_dir`` as a pyfunc model in the active run."""
    max_length = max_length or read_st_settings(model_dir).max_seq_length or 512
    dim = int(AutoConfig.from_pretrained(model_dir).hidden_size)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=pyfunc.__file__,
        artifacts={pyfunc.ARTIFACT: model_dir},
        code_paths=[str(Path(pipeline.__file__).parent)],
        model_config={"max_length": max_length},
        signature=pyfunc.encoder_signature(dim, max_length),
        input_example=list(input_example),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )


@contextmanager
def _run(uri: str, experiment: str) -> Iterator[None]:
    """The active run, else a new ``register`` run in ``experiment``."""
    if mlflow.active_run() is not None:
        yield
        return
    with mlflow.start_run(experiment_id=ensure_experiment(uri, experiment), run_name="register"):
        yield


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


def _decide(new: float, champion: ModelVersion | None) -> tuple[bool, dict[str, str], str]:
    """(promote?, tags recording the comparison, the reason in words)."""
    if champion is None:
        return True, {"champion_decision": "promoted"}, "no champion yet"
    tags = {"previous_champion_version": str(champion.version)}
    recorded = champion.tags.get(TAG_OBJECTIVE)
    if recorded is None:
        reason = f"champion v{champion.version} has no {TAG_OBJECTIVE} tag to compare with"
        return False, {**tags, "champion_decision": "kept"}, reason
    tags["previous_champion_dev_objective"] = recorded
    old = float(recorded)
    promote = new > old
    sign = ">" if promote else "<="
    reason = f"{TAG_OBJECTIVE} {new:.6g} {sign} {old:.6g} of v{champion.version}"
    return promote, {**tags, "champion_decision": "promoted" if promote else "kept"}, reason


def _register(
    model_dir: str,
    uri: str,
    name: str,
    dev_objective: float,
    input_example: Sequence[str],
    experiment: str,
    max_length: int | None,
) -> RegistrationResult:
    use_tracking(uri)
    client = MlflowClient(tracking_uri=uri)
    with _run(uri, experiment):
        info = log_encoder(
            model_dir,
            name=name,
            input_example=input_example,
            max_length=max_length,
            registered_model_name=name,
        )
        mlflow.log_metric(TAG_OBJECTIVE, dev_objective)
    return apply_champion_rule(
        client, name, str(info.registered_model_version), dev_objective, model_dir
    )


def apply_champion_rule(
    client: MlflowClient, name: str, new_version: str, dev_objective: float, model_dir: str
) -> RegistrationResult:
    """Compare the registered ``new_version`` with ``name``'s champion, record the comparison as
    its tags (``DECISION_TAGS``) and move ``@champion`` to it if it is better."""
    champion = _champion(client, name)
    promote, tags, reason = _decide(dev_objective, champion)
    tags.update(
        {TAG_OBJECTIVE: repr(dev_objective), "champion_reason": reason, "model_dir": model_dir}
    )
    for key, value in tags.items():
        client.set_model_version_tag(name, new_version, key, value)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, new_version)
    outcome = "is now @champion" if promote else f"registered, @champion stays v{champion.version}"
    return RegistrationResult(
        version=new_version,
        is_champion=promote,
        previous_champion=str(champion.version) if champion else None,
        message=f"{name} v{new_version} {outcome} ({reason})",
    )


def register_model(
    model_dir: str | os.PathLike,
    *,
    uri: str,
    name: str,
    dev_objective: float,
    input_example: Sequence[str],
    experiment: str = "codiemb",
    max_length: int | None = None,
) -> RegistrationResult:
    """Log ``model_dir`` as a pyfunc model, register it as ``name`` and move ``@champion`` to it
    only if ``dev_objective`` is strictly higher than the champion's (the first version always).

    Logs into the active run, else into a new run in ``experiment``. ``max_length`` (default: the
    folder's ``max_seq_length``) is the pyfunc's default truncation.
    """
    model_dir = str(Path(model_dir).resolve())
    if not math.isfinite(dev_objective):
        raise RegistrationFailed(
            f"refusing to register {name}: dev objective is {dev_objective}; "
            f"the model is on disk at {model_dir}"
        )
    try:
        return _register(model_dir, uri, name, dev_objective, input_example, experiment, max_length)
    except Exception as exc:
        raise RegistrationFailed(
            f"registering {name} at {redact(uri)} failed ({type(exc).__name__}: "
            f"{str(exc)[:300]}); the trained model is safe on disk at {model_dir}"
        ) from exc
