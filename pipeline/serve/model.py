"""One loaded model as the endpoint serves it: the encoder, the label responses carry, and the
token counts of what it embedded (``usage.prompt_tokens``, how many texts were cut)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.model.encoder import Encoder

ENCODE_BATCH = 64  # texts per encoder pass (length-sorted, so short texts pad little)


@dataclass(frozen=True)
class Embedded:
    """One request's share of a batch: embeddings [n, D] in input order, tokens, texts cut."""

    vectors: np.ndarray
    prompt_tokens: int
    truncated: int
    model: str


@dataclass(frozen=True)
class ServedModel:
    encoder: Encoder
    label: str  # "<registered name>@v<version>" or the folder
    version: str | None  # the registry version; None for a folder

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text before truncation (special tokens included, as the encoder adds)."""
        ids = self.encoder.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def embed(self, requests: Sequence[Sequence[str]]) -> list[Embedded]:
        """Embed the texts of several requests in one length-sorted pass; one ``Embedded`` each.
        Texts over ``max_seq_length`` tokens are cut there, as the encoder does, and counted."""
        texts = [text for request in requests for text in request]
        limit = self.encoder.max_seq_length
        counts = self.token_counts(texts)
        vectors = self.encoder.encode(texts, max_length=limit, batch_size=ENCODE_BATCH)
        out, start = [], 0
        for request in requests:
            stop = start + len(request)
            mine = counts[start:stop]
            out.append(
                Embedded(
                    vectors=vectors[start:stop],
                    prompt_tokens=sum(min(n, limit) for n in mine),
                    truncated=sum(n > limit for n in mine),
                    model=self.label,
                )
            )
            start = stop
        return out
