"""The embeddings API as OpenAI's clients speak it: request validation and response bodies.

Pure (numpy only, no Ray, no torch), so every rule is unit-tested without a server. A request that
breaks a rule raises ``RequestError``: a 4xx status and the JSON body
``{"error": {"message", "type", "param"}}``, the message naming the field.

    request  {"input": str | [str, ...], "model": str, "encoding_format": "float" | "base64",
              "dimensions": int}                               (only ``input`` is required)
    response {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": ...}],
              "model": "<name>@v<version>" | "<folder>",
              "usage": {"prompt_tokens": n, "total_tokens": n}, "truncated": <texts cut>}
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

ENCODING_FORMATS = ("float", "base64")


def error_body(message: str, type: str, param: str | None = None) -> dict:
    """OpenAI's error body: ``{"error": {"message", "type", "param"}}``."""
    return {"error": {"message": message, "type": type, "param": param}}


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx), a message naming ``param`` (the field)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    @property
    def type(self) -> str:
        return "request_too_large" if self.status == 413 else "invalid_request_error"

    def body(self) -> dict:
        """The JSON error body."""
        return error_body(self.message, self.type, self.param)


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None
    model: str | None = None


def check_content_length(header: str | None, max_body_bytes: int) -> None:
    """413 before the body is read when its declared ``Content-Length`` is over the limit."""
    if header is not None and header.isdigit() and int(header) > max_body_bytes:
        raise _too_large(int(header), max_body_bytes)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        413, f"request body is {size} bytes, over the limit of {limit} (serve.max_body_bytes)"
    )


def _texts(value, max_texts: int) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise RequestError(
            400,
            f"'input' must be a string or a list of strings, got {type(value).__name__}",
            "input",
        )
    if not value:
        raise RequestError(400, "'input' is an empty list: send at least one text", "input")
    if len(value) > max_texts:
        raise RequestError(
            400,
            f"'input' has {len(value)} texts, more than the {max_texts} allowed per request "
            "(serve.max_texts_per_request): split it",
            "input",
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(
                400,
                f"'input[{i}]' must be a string, got {type(item).__name__} "
                "(token-id input is not supported)",
                f"input[{i}]",
            )
    return value


def _dimensions(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RequestError(
            400, f"'dimensions' must be a positive integer, got {value!r}", "dimensions"
        )
    return value


def parse_embedding_request(
    body: bytes, *, max_texts: int, max_body_bytes: int
) -> EmbeddingRequest:
    """The validated request in ``body``; ``RequestError`` naming the field otherwise."""
    if len(body) > max_body_bytes:
        raise _too_large(len(body), max_body_bytes)
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(payload).__name__}")
    if "input" not in payload:
        raise RequestError(400, "'input' is missing: a string or a list of strings", "input")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ENCODING_FORMATS:
        raise RequestError(
            400,
            f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, got {encoding!r}",
            "encoding_format",
        )
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, got {type(model).__name__}", "model")
    return EmbeddingRequest(
        texts=_texts(payload["input"], max_texts),
        encoding_format=encoding,
        dimensions=_dimensions(payload.get("dimensions")),
        model=model,
    )


def check_dimensions(dimensions: int | None, model_dim: int) -> None:
    """400 when ``dimensions`` asks for more than the model's ``model_dim``."""
    if dimensions is not None and dimensions > model_dim:
        raise RequestError(
            400,
            f"'dimensions' is {dimensions}, more than the model's {model_dim}: "
            f"ask for at most {model_dim}",
            "dimensions",
        )


def shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` components of each row [N, D], L2-normalised again (None: as is)."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, np.finfo(np.float32).tiny)


def _encode(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":  # little-endian float32 bytes, as OpenAI's clients decode them
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector  # float32; the JSON writer prints each as its shortest exact repr


def embeddings_response(
    vectors: np.ndarray,
    request: EmbeddingRequest,
    *,
    model: str,
    prompt_tokens: int,
    truncated: int,
) -> dict:
    """The response body for ``request``'s embeddings ``vectors`` [N, D] (input order). With
    ``encoding_format`` float each embedding is a float32 array: serialise the body with numpy
    support (``orjson.OPT_SERIALIZE_NUMPY``, about 10x faster than ``tolist`` + ``json``)."""
    vectors = shorten(np.asarray(vectors, dtype=np.float32), request.dimensions)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(row, request.encoding_format)}
            for i, row in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "truncated": truncated,
    }


def models_response(model: str, created: int) -> dict:
    """``GET /v1/models``: the one model this endpoint serves."""
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "codiemb"}],
    }
