"""Load test of the embeddings endpoint on this machine (loopback only; bounded, stops by itself):
concurrency 1, 8 and 32, requests of 1 and 16 texts; p50/p95/p99 latency, texts/s and errors per
level, against in-process ``SentenceTransformer.encode`` on the same texts and model folder,
measured in the same run: one pass before and one after every level (the machine may be shared;
their mean is that level's baseline, ``ratio`` its texts/s over it). With ``--infinity``, the same
levels are sent to ``infinity-emb`` serving the same folder on the same CPU with its default engine
(torch), each of its levels right after the project's, and ``vs infinity`` is the project's texts/s
over infinity's at that level.

    make bench-serve                                                         # both, ~5 min
    python bench/serve_load.py --out /tmp/serve_load.json                  # packaged MiniLM, ~2 min
    python bench/serve_load.py --seconds 3 --model tiny-random --out /tmp/sl.json

``infinity-emb`` cannot share this project's environment (it pins numpy < 2, sentence-transformers < 4
and click < 8.2), so it lives in its own ``.venv-infinity`` that ``make bench-serve`` builds
(``--infinity .venv-infinity/bin/infinity_emb``).

Texts are STS-B test sentences (short, as search queries are). The endpoint is the project's
application (``pipeline.serve.app.application``) serving ``--model`` as a folder, one replica with
``--replica-cpus`` CPUs (its torch threads), dynamic batching up to ``--max-batch`` requests waiting
at most ``--batch-wait`` seconds (default: the config's ``serve.max_batch_size`` and
``serve.batch_wait_timeout_s``, what the endpoint runs with). The client (asyncio + aiohttp) runs on
the same cores: its share of the CPU is part of the measurement. Each level sends until
``--seconds`` have passed or ``--max-requests`` were sent. The headline ``ratio`` is the one at
concurrency 32 with 16 texts per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import finish, machine  # noqa: E402
from pipeline.config import ServeConfig  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402

CONCURRENCY = (1, 8, 32)
TEXTS_PER_REQUEST = (1, 16)


def stsb_sentences(data_root: str, limit: int) -> list[str]:
    """Both sentences of each STS-B test pair, the first ``limit``."""
    rows = Path(data_root, "stsbenchmark", "sts-test.csv").read_text().splitlines()
    sentences = [s for row in rows for s in row.split("\t")[5:7]]
    return sentences[:limit]


class InProcess:
    """``SentenceTransformer(folder).encode`` in this process, timed on demand."""

    def __init__(self, folder: str, texts: list[str], batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device="cpu")
        self.texts, self.batch_size = texts, batch_size
        self.model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up

    def rate(self) -> float:
        """texts/s of one pass over the texts."""
        started = time.perf_counter()
        self.model.encode(self.texts, batch_size=self.batch_size, normalize_embeddings=True)
        return len(self.texts) / (time.perf_counter() - started)


async def load_level(
    url: str,
    model: str,
    texts: list[str],
    concurrency: int,
    per_request: int,
    seconds: float,
    max_requests: int,
) -> dict[str, float]:
    """``concurrency`` clients sending ``per_request`` texts each until the time or request bound."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal errors, sent
        position = offset
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            batch = [texts[(position + i) % len(texts)] for i in range(per_request)]
            position += per_request * concurrency
            started = time.perf_counter()
            try:
                async with session.post(url, json={"input": batch, "model": model}) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, i * per_request) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p95, p99 = (
        np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else (float("nan"),) * 3
    )
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "texts/s": len(latencies) * per_request / elapsed,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_endpoint(folder: str, args: argparse.Namespace) -> str:
    """The project's application serving ``folder`` on a free loopback port; returns its URL."""
    import ray
    from ray import serve

    from pipeline.config import load_config
    from pipeline.serve.app import application

    ray.init(num_cpus=args.replica_cpus, include_dashboard=False, log_to_driver=False)
    cfg = load_config(
        "demo",
        [
            f"serve.model={folder}",
            f"serve.num_cpus={args.replica_cpus}",
            f"serve.max_batch_size={args.max_batch}",
            f"serve.batch_wait_timeout_s={args.batch_wait}",
        ],
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(cfg), name="serve-load", route_prefix="/", blocking=False)
    return f"http://127.0.0.1:{port}/v1/embeddings"


def start_infinity(executable: str, folder: str, threads: int) -> tuple[subprocess.Popen, str]:
    """``infinity_emb v2`` serving ``folder`` on a free loopback port with its default engine, torch
    limited to ``threads`` threads like the replica; returns the process and its embeddings URL once
    ``/health`` answers (at most 3 minutes)."""
    port = _free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }
    command = [executable, "v2", "--model-id", folder, "--served-model-name", "bench"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    command += ["--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"infinity_emb exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process, f"http://127.0.0.1:{port}/embeddings"
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError("infinity_emb did not answer /health within 3 minutes")


def same_embeddings(urls: dict[str, str], texts: list[str]) -> float:
    """The lowest cosine between the two endpoints' embeddings of ``texts`` (a check that both
    serve the same model with the same pooling)."""
    vectors = []
    for url in urls.values():
        body = json.dumps({"input": texts, "model": "bench"}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = json.load(response)["data"]
        rows = np.asarray([d["embedding"] for d in sorted(data, key=lambda d: d["index"])])
        vectors.append(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    return float(np.min(np.sum(vectors[0] * vectors[1], axis=1)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged", help="a model folder or a built-in name")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--texts", type=int, default=1024, help="distinct STS-B sentences used")
    parser.add_argument("--seconds", type=float, default=10.0, help="per level")
    parser.add_argument("--max-requests", type=int, default=5000, help="per level")
    parser.add_argument("--replica-cpus", type=int, default=2)
    defaults = ServeConfig()  # the endpoint's own batching unless asked otherwise
    parser.add_argument(
        "--max-batch", type=int, default=defaults.max_batch_size, help="requests per Serve batch"
    )
    parser.add_argument(
        "--batch-wait", type=float, default=defaults.batch_wait_timeout_s, help="seconds"
    )
    parser.add_argument(
        "--baseline-texts", type=int, default=256, help="texts of each in-process encode pass"
    )
    parser.add_argument(
        "--infinity", default=None, help="an infinity_emb executable to compare with (optional)"
    )
    parser.add_argument("--out", required=True, help="JSON file (local path or URI)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import torch
    import transformers

    from pipeline.model.loading import resolve_model_path

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.replica_cpus)
    folder = resolve_model_path(args.model)
    texts = stsb_sentences(args.data_root, args.texts)
    in_process = InProcess(folder, texts[: args.baseline_texts])

    from ray import serve

    urls = {"ray-serve": start_endpoint(folder, args)}
    infinity = None
    rows, agreement = {}, None
    try:
        if args.infinity:
            infinity, urls["infinity"] = start_infinity(args.infinity, folder, args.replica_cpus)
            agreement = same_embeddings(urls, texts[:64])
        for url in urls.values():
            asyncio.run(load_level(url, "bench", texts, 1, 1, 2.0, 50))  # warm-up
        after = in_process.rate()
        for per_request in TEXTS_PER_REQUEST:
            for concurrency in CONCURRENCY:
                for server, url in urls.items():
                    before = after
                    row = asyncio.run(
                        load_level(
                            url,
                            "bench",
                            texts,
                            concurrency,
                            per_request,
                            args.seconds,
                            args.max_requests,
                        )
                    )
                    after = in_process.rate()
                    row["in-process texts/s"] = (before + after) / 2
                    row["ratio"] = row["texts/s"] / row["in-process texts/s"]
                    rows[f"{server} c={concurrency} x{per_request}"] = row
                    print(f"{server} c={concurrency} x{per_request}: {row}", flush=True)
                if infinity is not None:
                    level = f"c={concurrency} x{per_request}"
                    ours, theirs = rows[f"ray-serve {level}"], rows[f"infinity {level}"]
                    ours["vs infinity"] = ours["texts/s"] / theirs["texts/s"]
    finally:
        serve.shutdown()
        if infinity is not None:
            infinity.terminate()
            infinity.wait(timeout=30)
    columns = ["requests", "errors", "texts/s", "p50_ms", "p95_ms", "p99_ms"]
    columns += ["in-process texts/s", "ratio"] + (["vs infinity"] if infinity else [])
    table = markdown_table(rows, columns, digits=2, index_name="level")
    report = {
        "machine": machine(torch.device("cpu")),
        "model": folder,
        "settings": vars(args),
        "levels": rows,
        "ratio": rows["ray-serve c=32 x16"]["ratio"],
        "vs_infinity": rows["ray-serve c=32 x16"].get("vs infinity"),
        "min_cosine_vs_infinity": agreement,
    }
    return finish(report, table, args.out, label="endpoint c=32 x16 / in-process encode")


if __name__ == "__main__":
    main()
