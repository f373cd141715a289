"""The embeddings endpoint (pipeline/serve/, jobs/serve.py) on a local Ray Serve: embeddings equal
sentence-transformers', every bad input gets its 4xx and leaves the server up, and the served model
follows the registry's champion alias without a failed request.

Two tiny random models (different weights, max_seq_length 32) are registered as v1 (champion) and
v2 in a SQLite store; one Serve application serves the champion for the whole module.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from pipeline.config import load_config
from pipeline.model.encoder import Encoder
from pipeline.model.loading import build_tiny_model, resolve_model_path
from pipeline.model.save import save_pretrained_st
from pipeline.serve.protocol import RequestError, parse_embedding_request, shorten
from pipeline.serve.source import ModelLoadError, ModelSource
from pipeline.tracking.mlflow_run import embedded_uri
from pipeline.tracking.registry import CHAMPION, register_model

REPO = Path(__file__).resolve().parent.parent

NAME = "codiemb-serve-test"
MAX_SEQ = 32
MAX_TEXTS = 16
MAX_BODY = 20_000
LONG = "dense retrieval with hard negatives and a long passage " * 20  # > MAX_SEQ tokens
TEXTS = ["the cat sat on the mat", "x", LONG, "STS pairs are scored by cosine", ""]


def _st_folder(model_path: str, out) -> str:
    encoder = Encoder.from_pretrained(model_path, device="cpu", max_seq_length=MAX_SEQ)
    return save_pretrained_st(encoder, out)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """version -> the sentence-transformers folder registered as it (different random weights)."""
    root = tmp_path_factory.mktemp("serve-models")
    other = build_tiny_model(root / "tiny-seed1", seed=1)
    return {
        "1": _st_folder(resolve_model_path("tiny-random"), root / "v1"),
        "2": _st_folder(other, root / "v2"),
    }


@pytest.fixture(scope="module")
def registry(folders, tmp_path_factory) -> str:
    """A SQLite store where v1 is the champion and v2 is registered beside it."""
    root = tmp_path_factory.mktemp("serve-registry")
    uri = embedded_uri(str(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        common = dict(uri=uri, name=NAME, input_example=["a text"], max_length=MAX_SEQ)
        assert register_model(folders["1"], dev_objective=0.5, **common).is_champion
        assert not register_model(folders["2"], dev_objective=0.4, **common).is_champion
    return uri


@pytest.fixture(scope="module")
def server(ray_session, registry, free_port):
    """The application serving models:/NAME@champion, polling the alias every 0.5 s."""
    from ray import serve

    from pipeline.serve.app import application

    cfg = load_config(
        "smoke",
        [
            f"tracking.uri={registry}",
            f"tracking.registered_model={NAME}",
            "serve.alias_poll_s=0.5",
            "serve.max_batch_size=8",
            f"serve.max_texts_per_request={MAX_TEXTS}",
            f"serve.max_body_bytes={MAX_BODY}",
        ],
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(cfg), name="serve-test", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def reference(folders):
    """version -> SentenceTransformer(folder).encode(texts, normalize_embeddings=True)."""
    from sentence_transformers import SentenceTransformer

    models = {v: SentenceTransformer(f, device="cpu") for v, f in folders.items()}
    return lambda version, texts: models[version].encode(texts, normalize_embeddings=True)


def _embed(url: str, payload, **kwargs) -> requests.Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload)
    headers = {"content-type": "application/json"}
    return requests.post(f"{url}/v1/embeddings", data=data, headers=headers, timeout=30, **kwargs)


def _vectors(body: dict) -> np.ndarray:
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def _version(body: dict) -> str:
    name, _, version = body["model"].partition("@v")
    assert name == NAME, body["model"]
    return version


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _assert_matches(body: dict, texts: list[str], reference) -> None:
    got = _vectors(body)
    assert got.shape[0] == len(texts)
    assert _cosines(got, reference(_version(body), texts)).min() >= 0.99999


# --------------------------------------------------------------------------- pure parts (no Ray)


def test_serve_protocol_shortens_and_renormalises():
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    short = shorten(vectors, 2)
    assert short.shape == (2, 2)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(short[0], [0.6, 0.8], rtol=1e-6)
    assert shorten(vectors, None) is vectors


def test_serve_protocol_imports_neither_ray_nor_torch():
    code = "import sys, pipeline.serve.protocol; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_serve_protocol_names_the_field():
    limits = dict(max_texts=2, max_body_bytes=100)
    with pytest.raises(RequestError) as info:
        parse_embedding_request(b'{"input": ["a", ["b"]]}', **limits)
    assert (info.value.status, info.value.param) == (400, "input[1]")
    with pytest.raises(RequestError) as info:
        parse_embedding_request(b'{"input": "' + b"a" * 200 + b'"}', **limits)
    assert info.value.status == 413 and "serve.max_body_bytes" in info.value.message
    parsed = parse_embedding_request(b'{"input": "one", "model": "m"}', **limits)
    assert (parsed.texts, parsed.encoding_format, parsed.dimensions) == (["one"], "float", None)


def test_serve_config_section_and_deployment_options():
    from pipeline.config import ConfigError
    from pipeline.serve.app import deployment_options

    with pytest.raises(ConfigError, match=r"smoke.yaml.*serve.autoscaling: .*min_replicas=3 > max"):
        load_config(
            "smoke", ["serve.autoscaling.min_replicas=3", "serve.autoscaling.max_replicas=2"]
        )
    with pytest.raises(ConfigError, match=r"serve.max_texts_per_request"):
        load_config("smoke", ["serve.max_texts_per_request=0"])
    fixed = deployment_options(load_config("smoke", ["serve.num_replicas=3", "serve.num_gpus=1"]))
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"]["num_gpus"] == 1
    scaled = deployment_options(load_config("smoke", ["serve.autoscaling.max_replicas=4"]))
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 4


def test_serve_source_folder_and_missing_champion(folders, tmp_path):
    model = ModelSource(folder=folders["1"]).load()
    assert (model.label, model.version, model.encoder.max_seq_length) == (folders["1"], None, 32)
    store = embedded_uri(str(tmp_path))
    MlflowClient(tracking_uri=store).search_experiments()  # an empty store
    with pytest.raises(ModelLoadError, match=rf"models:/{NAME}@champion at sqlite:///.*not found"):
        ModelSource(tracking_uri=store, registered_model=NAME).load_at_start()


def test_serve_job_missing_model_is_one_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.serve",
            "--config",
            "configs/smoke.yaml",
            "serve.model=/no/such",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("serve stopped: serve.model /no/such does not exist")
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- the endpoint


def test_serve_embeddings_equal_sentence_transformers(server, reference):
    single = _embed(server, {"input": "the cat sat on the mat", "model": "anything"})
    assert single.status_code == 200, single.text
    body = single.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    _assert_matches(body, ["the cat sat on the mat"], reference)

    batched = _embed(server, {"input": TEXTS}).json()
    _assert_matches(batched, TEXTS, reference)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-random"))
    counts = [len(ids) for ids in tokenizer(TEXTS, verbose=False)["input_ids"]]
    assert batched["usage"] == {
        "prompt_tokens": sum(min(n, MAX_SEQ) for n in counts),
        "total_tokens": sum(min(n, MAX_SEQ) for n in counts),
    }
    assert batched["truncated"] == 1  # LONG


def test_serve_concurrent_requests_share_batches_in_order(server, reference):
    payloads = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 2
    results: list = [None] * len(payloads)

    def send(i: int) -> None:
        results[i] = _embed(server, {"input": payloads[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for texts, response in zip(payloads, results):
        assert response.status_code == 200, response.text
        _assert_matches(response.json(), texts, reference)


def test_serve_base64_and_dimensions(server):
    full = _vectors(_embed(server, {"input": TEXTS[:2]}).json())
    packed = _embed(server, {"input": TEXTS[:2], "encoding_format": "base64"}).json()
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in packed["data"]]
    )
    np.testing.assert_allclose(decoded, full, atol=1e-6)
    short = _vectors(_embed(server, {"input": TEXTS[:2], "dimensions": 16}).json())
    assert short.shape == (2, 16)
    np.testing.assert_allclose(short, shorten(full, 16), atol=1e-5)


def test_serve_models_and_health(server):
    health = requests.get(f"{server}/health", timeout=10).json()
    models = requests.get(f"{server}/v1/models", timeout=10).json()
    assert health["status"] == "ok"
    assert models["object"] == "list" and models["data"][0]["id"] == health["model"]
    assert health["model"].startswith(f"{NAME}@v")


BAD_INPUTS = [
    # (body, status, param, words in the message)
    (b"{not json", 400, None, "not valid JSON"),
    (b'["a list"]', 400, None, "JSON object"),
    ({"model": "m"}, 400, "input", "'input' is missing"),
    ({"input": []}, 400, "input", "empty list"),
    ({"input": 42}, 400, "input", "string or a list of strings"),
    ({"input": ["ok", 7]}, 400, "input[1]", "'input[1]' must be a string"),
    ({"input": ["t"] * (MAX_TEXTS + 1)}, 400, "input", f"more than the {MAX_TEXTS}"),
    ({"input": "x" * MAX_BODY}, 413, None, "serve.max_body_bytes"),
    ({"input": "a", "encoding_format": "float16"}, 400, "encoding_format", "'float16'"),
    ({"input": "a", "dimensions": 0}, 400, "dimensions", "positive integer"),
    ({"input": "a", "dimensions": "8"}, 400, "dimensions", "positive integer"),
    ({"input": "a", "dimensions": 65}, 400, "dimensions", "more than the model's 64"),
]


@pytest.mark.parametrize(("payload", "status", "param", "words"), BAD_INPUTS)
def test_serve_bad_input_gets_a_4xx_naming_the_field(server, payload, status, param, words):
    response = _embed(server, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert _embed(server, {"input": ["the next request"]}).status_code == 200


def test_serve_follows_the_champion_alias_without_failures(server, registry, reference):
    """A client loop runs while the alias moves v1 -> v2: the responses switch to v2, none fails."""
    client = MlflowClient(tracking_uri=registry)
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                response = _embed(server, {"input": TEXTS[:3]})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                seen.append(_version(response.json()))
            except Exception as exc:  # a refused connection counts too
                failures.append(repr(exc))

    clients = [threading.Thread(target=loop) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while "1" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        client.set_registered_model_alias(NAME, CHAMPION, "2")
        deadline = time.monotonic() + 40
        while seen.count("2") < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert failures == []
    assert seen[0] == "1" and seen.count("2") >= 5, seen
    first_v2 = seen.index("2")
    assert set(seen[first_v2 + 4 :]) <= {"2"}  # no flip back (two clients may straddle the swap)
    _assert_matches(_embed(server, {"input": TEXTS}).json(), TEXTS, reference)
    assert _version(_embed(server, {"input": "x"}).json()) == "2"
