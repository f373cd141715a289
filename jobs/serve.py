"""Serve the registry's champion (or a model folder) as an OpenAI-compatible embeddings endpoint on
Ray Serve, following the champion alias as it moves; blocks until interrupted.

python -m jobs.serve --config demo                                  # models:/codiemb-encoder@champion
python -m jobs.serve --config demo serve.model=runs/demo/final serve.port=8001
curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' -d '{"input": ["a text"]}'

The same application without this job's start-up check: serve run pipeline.serve.app:build_app config=demo
"""

from __future__ import annotations

import threading

from pipeline.cli import run_main
from pipeline.config import Config
from pipeline.serve.source import ModelSource


def main(cfg: Config) -> None:
    source = ModelSource.from_config(cfg)
    label = source.load_at_start().label  # a model that cannot be loaded stops here, in one line
    print(f"[serve] {source.describe()} -> {label}")

    from ray import serve

    from pipeline.serve.app import application

    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(application(cfg, source), route_prefix=cfg.serve.route, blocking=False)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route.rstrip('/')}/v1/embeddings"
    print(f"[serve] ready: POST {url} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        serve.shutdown()
        print("[serve] stopped")


if __name__ == "__main__":
    run_main(main, description=__doc__, checks=())
