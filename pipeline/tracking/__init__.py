"""MLflow for the pipeline: tracking (parent run, nested stage runs, metrics, artifacts) and the
model registry (pyfunc model, ``champion`` alias). The only package that imports MLflow."""

from pipeline.tracking.mlflow_run import (
    TrackingUnavailable,
    check_tracking,
    log_artifact,
    log_dict,
    log_metrics,
    pipeline_run,
    resolve_tracking_uri,
    stage_run,
    use_tracking,
)
from pipeline.tracking.offline import tracking_or_offline
from pipeline.tracking.registry import (
    CHAMPION,
    RegistrationFailed,
    RegistrationResult,
    register_model,
)

__all__ = [
    "CHAMPION",
    "RegistrationFailed",
    "RegistrationResult",
    "TrackingUnavailable",
    "check_tracking",
    "log_artifact",
    "log_dict",
    "log_metrics",
    "pipeline_run",
    "register_model",
    "resolve_tracking_uri",
    "stage_run",
    "tracking_or_offline",
    "use_tracking",
]
