"""The Ray Serve deployment: OpenAI's ``POST /v1/embeddings``, ``GET /v1/models`` and
``GET /health`` over one ``ServedModel``, with requests batched by ``@serve.batch``.

A request is validated (``protocol``) before it joins a batch, so a bad one gets its 4xx and never
touches the others. A batch embeds all its requests' texts in one length-sorted encoder call, in a
thread (the event loop keeps taking requests). With a registry source, ``ChampionFollower`` swaps
the model when the champion alias moves.

No ``from __future__ import annotations`` here: FastAPI reads the route signatures' types at run
time, through Serve's wrapper class, and a string ``Request`` would become a query parameter.
"""

import asyncio
import time

import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from pipeline.serve.follow import ChampionFollower
from pipeline.serve.model import Embedded, ServedModel
from pipeline.serve.protocol import (
    RequestError,
    check_content_length,
    check_dimensions,
    embeddings_response,
    error_body,
    models_response,
    parse_embedding_request,
)
from pipeline.serve.source import ModelSource

api = FastAPI(title="codiemb embeddings")


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refused (413) as soon as it grows over ``max_body_bytes``, declared or not."""
    check_content_length(request.headers.get("content-length"), max_body_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        check_content_length(str(size), max_body_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="embeddings")
@serve.ingress(api)
class Embedder:
    """One replica: the model, its batcher, and (registry source) the champion follower."""

    def __init__(
        self,
        *,
        source: ModelSource,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        alias_poll_s: float,
        max_texts_per_request: int,
        max_body_bytes: int,
        threads: int,
    ) -> None:
        self.follower: ChampionFollower | None = None  # first: Serve calls __del__ on failure too
        torch.set_num_threads(threads)
        self.model: ServedModel = source.load()
        self.loaded_at = int(time.time())
        self.max_texts = max_texts_per_request
        self.max_body_bytes = max_body_bytes
        self.embed_batch.set_max_batch_size(max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        if source.follows_alias and alias_poll_s > 0:
            self.follower = ChampionFollower(source, self.model, alias_poll_s, self._swap)
            self.follower.start()

    def _swap(self, model: ServedModel) -> None:
        self.model, self.loaded_at = model, int(time.time())

    @serve.batch
    async def embed_batch(self, requests: list[list[str]]) -> list[Embedded]:
        model = self.model  # this batch's model to the end, whatever a swap does meanwhile
        return await asyncio.to_thread(model.embed, requests)

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.max_body_bytes)
            parsed = parse_embedding_request(
                body, max_texts=self.max_texts, max_body_bytes=self.max_body_bytes
            )
            check_dimensions(parsed.dimensions, self.model.dim)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        try:
            done = await self.embed_batch(parsed.texts)
        except Exception as exc:
            message = f"embedding failed ({type(exc).__name__}: {exc})"
            return JSONResponse(error_body(message, "server_error"), status_code=500)
        body = embeddings_response(
            done.vectors,
            parsed,
            model=done.model,
            prompt_tokens=done.prompt_tokens,
            truncated=done.truncated,
        )
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    @api.get("/v1/models")
    async def models(self) -> dict:
        return models_response(self.model.label, self.loaded_at)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.model.label}

    def __del__(self) -> None:
        if self.follower is not None:
            self.follower.stop()
