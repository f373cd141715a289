"""A thin wrapper that lets MTEB (``mteb`` >= 2, the optional ``mteb`` extra) evaluate any checkpoint of
this pipeline: it satisfies mteb's ``EncoderProtocol`` (``encode`` / ``similarity`` /
``similarity_pairwise`` / ``mteb_model_meta``) without importing mteb.

Routing by mteb's ``prompt_type``: ``"query"`` -> the IR instruction and the query max length;
``"document"`` (``"passage"`` in mteb 1.x) -> no instruction, the passage max length; ``None`` (STS,
classification, clustering, ...) -> the STS instruction and the STS max length. Max lengths left ``None``
default to the model's ``max_seq_length`` (what MTEB itself uses, e.g. 256 for all-MiniLM-L6-v2).

Running an MTEB task (needs network access to download the task data):

    pip install -e '.[mteb]'
    python - <<'PY'
    import mteb
    from pipeline.model.mteb_adapter import MtebEncoder

    model = MtebEncoder.from_pretrained("runs/demo/final", instruction_ir="", instruction_sts="")
    # optional: name the results (else mteb files them under "no_model_name_available"):
    # model.meta = mteb.ModelMeta(name="me/codiemb-demo", revision="1", ...)
    results = mteb.evaluate(model, tasks=mteb.get_tasks(tasks=["SciFact", "STSBenchmark"]))
    print(results)
    PY
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.encoder import Encoder


def _texts(inputs: Iterable[Any]) -> list[str]:
    """Strings from mteb's DataLoader of ``{"text": [...]}`` batches, or from a plain list of strings."""
    texts: list[str] = []
    for item in inputs:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            texts.extend(item["text"])
        else:
            raise TypeError(f"expected strings or batches with a 'text' field, got {type(item)}")
    return texts


def _as_matrix(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.float()
    else:
        t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return t.unsqueeze(0) if t.ndim == 1 else t


class MtebEncoder:
    """An :class:`Encoder` behind mteb's encoder protocol."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        instruction_ir: str = "",
        instruction_sts: str = "",
        max_length_query: int | None = None,
        max_length_passage: int | None = None,
        max_length_sts: int | None = None,
        batch_size: int = 64,
        meta: Any = None,
    ) -> None:
        self.encoder = encoder
        self.instruction_ir = instruction_ir
        self.instruction_sts = instruction_sts
        self.max_length_query = max_length_query or encoder.max_seq_length
        self.max_length_passage = max_length_passage or encoder.max_seq_length
        self.max_length_sts = max_length_sts or encoder.max_seq_length
        self.batch_size = batch_size
        self.meta = meta

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> MtebEncoder:
        """Load a model folder (see ``Encoder.from_pretrained``) and wrap it."""
        return cls(Encoder.from_pretrained(path), **kwargs)

    @property
    def mteb_model_meta(self) -> Any:
        """An ``mteb.ModelMeta`` if one was set, else None (mteb then uses empty metadata)."""
        return self.meta

    def route(self, prompt_type: Any) -> tuple[str, int]:
        """(instruction, max length) for mteb's prompt type."""
        kind = getattr(prompt_type, "value", prompt_type)
        if kind == "query":
            return self.instruction_ir, self.max_length_query
        if kind in ("document", "passage"):
            return "", self.max_length_passage
        return self.instruction_sts, self.max_length_sts

    def encode(
        self,
        inputs: Iterable[Any],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embeddings [N, D] (float32, L2-normalised if the model normalises) of all texts in ``inputs``."""
        instruction, max_length = self.route(prompt_type)
        return self.encoder.encode(
            _texts(inputs),
            max_length=max_length,
            instruction=instruction,
            batch_size=kwargs.get("batch_size") or self.batch_size,
        )

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity matrix [N1, N2]."""
        a = F.normalize(_as_matrix(embeddings1), dim=-1)
        b = F.normalize(_as_matrix(embeddings2), dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of each row pair [N]."""
        return F.cosine_similarity(_as_matrix(embeddings1), _as_matrix(embeddings2), dim=-1)
