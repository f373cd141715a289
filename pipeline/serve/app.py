"""The embeddings application built from the config: replicas, autoscaling, CPUs and GPUs per
replica, batching, limits. Two ways to start it:

    python -m jobs.serve --config demo [serve.model=PATH ...]              # checks the model first
    serve run pipeline.serve.app:build_app config=demo [serve.model=PATH ...]
"""

from __future__ import annotations

from ray.serve import Application

from pipeline.config import Config, load_config
from pipeline.serve.deployment import Embedder
from pipeline.serve.source import ModelSource


def deployment_options(cfg: Config) -> dict:
    """``Embedder.options(...)`` from ``serve``: replicas or autoscaling, resources, queue depth
    (two batches per replica: one running, one filling)."""
    serve_cfg = cfg.serve
    options = {
        "ray_actor_options": {"num_cpus": serve_cfg.num_cpus, "num_gpus": serve_cfg.num_gpus},
        "max_ongoing_requests": 2 * serve_cfg.max_batch_size,
    }
    if serve_cfg.autoscaling is None:
        options["num_replicas"] = serve_cfg.num_replicas
    else:
        options["autoscaling_config"] = serve_cfg.autoscaling.model_dump()
    return options


def application(cfg: Config, source: ModelSource | None = None) -> Application:
    """The bound application serving ``source`` (default: the config's, see ``ModelSource``)."""
    serve_cfg = cfg.serve
    return Embedder.options(**deployment_options(cfg)).bind(
        source=source or ModelSource.from_config(cfg),
        max_batch_size=serve_cfg.max_batch_size,
        batch_wait_timeout_s=serve_cfg.batch_wait_timeout_s,
        alias_poll_s=serve_cfg.alias_poll_s,
        max_texts_per_request=serve_cfg.max_texts_per_request,
        max_body_bytes=serve_cfg.max_body_bytes,
        threads=max(1, int(serve_cfg.num_cpus)),
    )


def build_app(args: dict[str, str]) -> Application:
    """``serve run``'s builder: ``config=PRESET`` (default ``demo``), every other ``key=value`` a
    config override (``serve.model=PATH``, ``tracking.uri=...``)."""
    args = dict(args)
    preset = args.pop("config", "demo")
    return application(load_config(preset, [f"{key}={value}" for key, value in args.items()]))
