"""Upload the offline tracking record of a run (written when the job ran with
tracking.required=false while MLflow was down) into the tracking server, now that it answers.

    python -m jobs.upload_tracking --config configs/cluster.yaml [section.key=value ...] [--force]

The config names the run dir (run.root, run.name) and the server (tracking.uri, else
$MLFLOW_TRACKING_URI, else the run dir's embedded store). Runs, metrics, artifacts and logged models
are copied, registered versions are registered again and go through the champion rule against the
server's champion. A record already uploaded is refused unless --force (which copies it again).
"""

from __future__ import annotations

import sys

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.tracking import (
    TrackingUnavailable,
    check_tracking,
    resolve_tracking_uri,
    use_tracking,
)
from pipeline.tracking.offline import record_path
from pipeline.tracking.upload import UploadRefused, upload_offline


def main(cfg: Config, *, force: bool = False) -> dict:
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.dir)
    check_tracking(uri)
    use_tracking(uri)  # bounded HTTP retries for the calls that follow
    record = upload_offline(cfg.run.dir, uri, force=force)
    print(
        f"[upload] {len(record['runs'])} runs, {len(record['models'])} logged models and "
        f"{len(record['versions'])} model versions are in {record['uploaded_to']}; "
        f"id maps in {record_path(cfg.run.dir)}"
    )
    return record


if __name__ == "__main__":
    argv = sys.argv[1:]
    run_main(
        lambda cfg: main(cfg, force="--force" in argv),
        [a for a in argv if a != "--force"],
        description=__doc__,
        checks=(),
        known=(TrackingUnavailable, UploadRefused),
        name="upload",
    )
