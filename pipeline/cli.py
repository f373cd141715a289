"""The entry points' shared wrapper: parse the command line, check the config at start-up, run the
job, and turn a mistake the user fixes into one line instead of a traceback.

    if __name__ == "__main__":
        run_main(main, description=__doc__)                      # every start-up check
        run_main(main, description=__doc__, checks=("data", "run"), known=(BadDataError,))

A ``UserFacingError`` or ``ConfigError`` (and the job's own ``known`` errors) prints
``<job> stopped: <message>`` on stderr and exits (2; 1 for ``known``); ``--debug`` or
``CODIEMB_DEBUG=1`` prints the traceback above it. Any other exception keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.config import (
    Config,
    ConfigError,
    check_data_root,
    check_run_root,
    key_origin,
    parse_cli,
)
from pipeline.errors import UserFacingError
from pipeline.model.loading import quiet_transformers

__all__ = ["UserFacingError", "debug_requested", "run_main", "startup_checks"]


def _check_model(cfg: Config) -> None:
    from pipeline.model.loading import check_model_source

    name = cfg.model.name_or_path
    origin = key_origin(cfg, "model.name_or_path")
    check_model_source(name, label=f"model.name_or_path {name} ({origin})")


# name -> check; each raises ConfigError / UserFacingError with one line naming the key and the fix
CHECKS: dict[str, Callable[[Config], None]] = {
    "data": check_data_root,  # data.root exists (when a source or benchmark is read from under it)
    "model": _check_model,  # model.name_or_path is a built-in name, a model folder or a Hub id
    "run": check_run_root,  # <run.root>/<run.name> can be created and written
}
# No port check: a job binds no fixed port. ray.init() on a laptop starts its dashboard on the
# first free port from 8265 (50 tries) and every other Ray port on a free one, and the default
# MLflow store is SQLite in the run dir; an unreachable tracking.uri is TrackingUnavailable.


def startup_checks(cfg: Config, checks: Iterable[str] = tuple(CHECKS)) -> None:
    """Run the named start-up checks in order (data, model, run); cheap, before Ray starts."""
    for name in checks:
        CHECKS[name](cfg)


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` on the command line or ``CODIEMB_DEBUG`` set to something other than 0/empty."""
    return "--debug" in argv or os.environ.get("CODIEMB_DEBUG", "").strip() not in ("", "0")


def run_main(
    main: Callable[[Config], Any],
    argv: list[str] | None = None,
    *,
    description: str = "",
    checks: Iterable[str] = tuple(CHECKS),
    known: tuple[type[BaseException], ...] = (),
    name: str = "",
) -> Any:
    """``main(parse_cli(argv))`` after ``startup_checks(cfg, checks)``. A ``UserFacingError`` or
    ``ConfigError`` becomes ``<name> stopped: <message>`` on stderr and exit code 2; an exception of
    ``known`` (a job's own expected failures, e.g. ``TrackingUnavailable``) the same line and exit
    code 1. With ``--debug`` (or ``CODIEMB_DEBUG=1``) the traceback is printed first. ``name``
    defaults to the script's name (``pipeline`` for ``python -m jobs.pipeline``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    name = name or Path(sys.argv[0]).stem or "job"
    debug = debug_requested(argv)
    try:
        cfg = parse_cli(argv, description=description)
        startup_checks(cfg, checks)
        if not debug:
            quiet_transformers()
        return main(cfg)
    except (UserFacingError, ConfigError, *known) as exc:
        if debug:
            traceback.print_exception(exc)
        code = 2 if isinstance(exc, (UserFacingError, ConfigError)) else 1
        print(f"{name} stopped: {exc}", file=sys.stderr, flush=True)
        sys.exit(code)
