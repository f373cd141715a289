"""Where the served model comes from: a model folder (``serve.model=PATH``), or the version the
registry's ``champion`` alias points to (``models:/<tracking.registered_model>@champion`` on the
tracking URI), whose artifacts are downloaded and whose sentence-transformers folder is loaded.

Every failure is a ``ModelLoadError``: one line naming the folder or the URI, and why.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from pipeline.config import Config
from pipeline.errors import UserFacingError
from pipeline.model.encoder import Encoder
from pipeline.serve.model import ServedModel
from pipeline.tracking.mlflow_run import (
    TrackingUnavailable,
    check_tracking,
    redact,
    resolve_tracking_uri,
    sqlite_file,
)
from pipeline.tracking.registry import CHAMPION

FIX = "register a model (python -m jobs.pipeline) or serve a folder with serve.model=PATH"
FOLDER_FIX = (
    "point serve.model at a model folder (with config.json), or leave it empty to serve the "
    "registry's champion"
)


class ModelLoadError(UserFacingError):
    """The model to serve cannot be found or loaded; the message names the folder or URI."""


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:300]}"


def find_model_folder(root: str | Path) -> Path:
    """The sentence-transformers folder (``modules.json``) under ``root``, else the shallowest
    Hugging Face folder (``config.json``); ``FileNotFoundError`` when there is neither."""
    root = Path(root)
    for marker in ("modules.json", "config.json"):
        found = sorted(root.rglob(marker), key=lambda p: len(p.parts))
        if found:
            return found[0].parent
    raise FileNotFoundError(f"no modules.json or config.json under {root}")


def load_folder(folder: str | Path, *, label: str, version: str | None = None) -> ServedModel:
    """The encoder in ``folder`` (float32; on CUDA when this process sees a GPU)."""
    return ServedModel(Encoder.from_pretrained(folder), label=label, version=version)


@dataclass(frozen=True)
class ModelSource:
    """A model folder (``folder``), or ``registered_model@alias`` on ``tracking_uri``."""

    folder: str = ""
    tracking_uri: str = ""
    registered_model: str = ""
    alias: str = CHAMPION

    @classmethod
    def from_config(cls, cfg: Config) -> ModelSource:
        """``serve.model`` when set, else the registry's champion on the configured tracking URI."""
        if cfg.serve.model:
            return cls(folder=str(Path(cfg.serve.model).expanduser().resolve()))
        try:
            uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.dir)
        except ValueError as exc:
            raise ModelLoadError(f"no registry to serve from: {exc}") from exc
        return cls(tracking_uri=uri, registered_model=cfg.tracking.registered_model)

    @property
    def follows_alias(self) -> bool:
        return not self.folder

    def describe(self) -> str:
        """The folder, or ``models:/<name>@<alias> at <uri>`` (password redacted)."""
        if self.folder:
            return f"serve.model {self.folder}"
        return f"models:/{self.registered_model}@{self.alias} at {redact(self.tracking_uri)}"

    def load_at_start(self) -> ServedModel:
        """``load()``, after one quick request to the tracking store (no retries), so a store that
        is down fails in seconds instead of after MLflow's minutes of retries."""
        if self.follows_alias:
            db = sqlite_file(self.tracking_uri)
            if db is not None and not db.is_file():
                raise ModelLoadError(
                    f"{self.describe()}: no such store (nothing registered); {FIX}"
                )
            try:
                check_tracking(self.tracking_uri)
            except TrackingUnavailable as exc:
                raise ModelLoadError(f"{self.describe()}: {exc}") from exc
        return self.load()

    def current_version(self) -> str:
        """The registry version the alias points to now."""
        try:
            found = self._client().get_model_version_by_alias(self.registered_model, self.alias)
        except Exception as exc:
            raise ModelLoadError(f"{self.describe()}: {_reason(exc)}; {FIX}") from exc
        return str(found.version)

    def _client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def load(self, version: str | None = None) -> ServedModel:
        """The folder's model, or registry ``version`` (default: the alias's version now)."""
        if self.folder:
            return self._load_folder()
        version = version or self.current_version()
        return self._load_version(version)

    def _load_folder(self) -> ServedModel:
        path = Path(self.folder)
        if not path.is_dir():
            raise ModelLoadError(f"{self.describe()} does not exist: {FOLDER_FIX}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{self.describe()} has no config.json: {FOLDER_FIX}")
        try:
            return load_folder(path, label=str(path))
        except Exception as exc:
            raise ModelLoadError(f"{self.describe()} cannot be loaded ({_reason(exc)})") from exc

    def _load_version(self, version: str) -> ServedModel:
        where = f"models:/{self.registered_model}/{version} ({self.describe()})"
        with tempfile.TemporaryDirectory(prefix="codiemb-serve-") as tmp:
            try:
                artifacts = self._client().get_model_version_download_uri(
                    self.registered_model, version
                )
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=artifacts, dst_path=tmp, tracking_uri=self.tracking_uri
                )
                folder = find_model_folder(local)
                return load_folder(
                    folder, label=f"{self.registered_model}@v{version}", version=version
                )
            except Exception as exc:
                raise ModelLoadError(f"{where} cannot be loaded ({_reason(exc)})") from exc
