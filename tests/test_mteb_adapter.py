"""The MTEB adapter on the tiny model, offline: mteb 2.x's encoder protocol (re-declared here, mteb is an
optional extra), shapes, normalisation, and query / document / symmetric routing."""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.model.encoder import Encoder
from pipeline.model.mteb_adapter import MtebEncoder


@runtime_checkable
class EncoderProtocol(Protocol):
    """The members mteb 2.x's ``mteb.models.EncoderProtocol`` checks at run time."""

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs): ...

    def similarity(self, embeddings1, embeddings2): ...

    def similarity_pairwise(self, embeddings1, embeddings2): ...

    @property
    def mteb_model_meta(self) -> Any: ...


TEXTS = ["what causes rain", "Rain forms when water vapour condenses.", "cats purr", "ok"]


@pytest.fixture(scope="module")
def adapter(tiny_model_path) -> MtebEncoder:
    return MtebEncoder(
        Encoder.from_pretrained(tiny_model_path, device="cpu"),
        instruction_ir="Given a question, retrieve passages that answer it",
        instruction_sts="Retrieve semantically similar text",
        max_length_query=16,
        max_length_passage=48,
        batch_size=2,
    )


def _loader(texts: list[str]) -> DataLoader:
    """What mteb 2.x hands to ``encode``: a DataLoader of ``{"text": [...]}`` batches."""
    return DataLoader([{"text": t} for t in texts], batch_size=3)


def test_satisfies_mteb_encoder_protocol(adapter):
    assert isinstance(adapter, EncoderProtocol)
    params = inspect.signature(adapter.encode).parameters
    for name in ("task_metadata", "hf_split", "hf_subset", "prompt_type"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert adapter.mteb_model_meta is None


@pytest.mark.parametrize("prompt_type", [None, "query", "document"])
def test_encode_shapes_and_normalisation(adapter, prompt_type):
    emb = adapter.encode(
        _loader(TEXTS),
        task_metadata=None,
        hf_split="test",
        hf_subset="default",
        prompt_type=prompt_type,
    )
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
    assert emb.shape == (len(TEXTS), adapter.encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_routing_by_prompt_type(adapter):
    enc = adapter.encoder
    query = adapter.encode(_loader(TEXTS), prompt_type="query")
    document = adapter.encode(TEXTS, prompt_type="document", batch_size=4)
    symmetric = adapter.encode(_loader(TEXTS), prompt_type=None)
    np.testing.assert_allclose(
        query, enc.encode(TEXTS, max_length=16, instruction=adapter.instruction_ir), atol=1e-6
    )
    np.testing.assert_allclose(document, enc.encode(TEXTS, max_length=48), atol=1e-6)
    np.testing.assert_allclose(
        symmetric,
        enc.encode(TEXTS, max_length=enc.max_seq_length, instruction=adapter.instruction_sts),
        atol=1e-6,
    )
    assert not np.allclose(query, document, atol=1e-3)
    assert adapter.route("passage") == ("", 48)  # mteb 1.x name for documents


def test_similarity_functions(adapter):
    a = adapter.encode(TEXTS[:3], prompt_type="query")
    b = adapter.encode(TEXTS[1:], prompt_type="document")
    matrix = adapter.similarity(a, b)
    assert isinstance(matrix, torch.Tensor) and matrix.shape == (3, 3)
    torch.testing.assert_close(matrix, torch.from_numpy(a @ b.T), atol=1e-5, rtol=1e-5)
    pairwise = adapter.similarity_pairwise(a, b)
    torch.testing.assert_close(pairwise, torch.diagonal(matrix), atol=1e-5, rtol=1e-5)
    assert adapter.similarity(a[0], torch.from_numpy(b)).shape == (1, 3)
