"""Retrievers over a fixed corpus for hard-negative mining: BM25 (``bm25s``), exact dense cosine
(any encoder with the pipeline's ``encode`` signature) and their reciprocal-rank fusion.

Every retriever maps a list of queries to, per query, corpus row indices ranked best first. Ties are
broken by the lower corpus index, so a ranking depends only on the query and the corpus, never on
how queries are batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import bm25s
import numpy as np
import Stemmer

Method = Literal["bm25", "dense", "both"]
RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al., 2009)


class TextEncoder(Protocol):
    """What the dense retriever needs from ``pipeline.model.encoder.Encoder``."""

    def encode(
        self,
        texts: Sequence[str],
        *,
        max_length: int,
        instruction: str = "",
        batch_size: int = 64,
        sort_by_length: bool = True,
    ) -> np.ndarray: ...


class Retriever(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        """Per query, up to ``k`` corpus row indices (int64), best first."""
        ...


def top_k(scores: np.ndarray, k: int, index: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``k`` largest of a 1-D ``scores``, best first, ties to the lower index.

    ``index`` gives each position's corpus index for tie-breaking (default: the position itself).
    Selects with a partition first, so the cost is linear in ``len(scores)`` plus a sort of ~k.
    """
    n = scores.shape[0]
    index = np.arange(n) if index is None else index
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        keep = np.flatnonzero(scores >= kth)  # every tie of the k-th score, sorted below
    else:
        keep = np.arange(n)
    order = np.lexsort((index[keep], -scores[keep]))[:k]
    return keep[order]


class BM25Retriever:
    """Okapi BM25 (Lucene variant) over the corpus, with ``bm25s``'s tokenizer, English stopwords
    and the Snowball English stemmer. Documents with no query term (score 0) are never returned."""

    def __init__(self, corpus_texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        self._tokenizer = bm25s.tokenization.Tokenizer(
            stopwords="en", stemmer=Stemmer.Stemmer("english")
        )
        corpus_tokens = self._tokenizer.tokenize(
            list(corpus_texts), return_as="tuple", show_progress=False
        )
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(corpus_tokens, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        token_ids = self._tokenizer.tokenize(
            list(queries), update_vocab=False, return_as="ids", show_progress=False
        )
        results = []
        for ids in token_ids:
            scores = self._bm25.get_scores_from_ids(ids) if ids else None
            if scores is None or not scores.any():
                results.append(np.empty(0, dtype=np.int64))
                continue
            best = top_k(scores, k)
            results.append(best[scores[best] > 0].astype(np.int64))
        return results


class DenseRetriever:
    """Exact cosine top-k: the corpus is encoded once; queries are scored against it chunk by chunk
    (``query_block`` x ``corpus_chunk`` similarities at a time, never the full matrix)."""

    def __init__(
        self,
        encoder: TextEncoder,
        corpus_texts: Sequence[str],
        *,
        max_length_query: int,
        max_length_passage: int,
        instruction: str = "",
        batch_size: int = 64,
        corpus_chunk: int = 8192,
        query_block: int = 256,
    ) -> None:
        self.encoder = encoder
        self.max_length_query = max_length_query
        self.instruction = instruction
        self.batch_size = batch_size
        self.corpus_chunk = corpus_chunk
        self.query_block = query_block
        self.corpus_embeddings = encoder.encode(
            list(corpus_texts), max_length=max_length_passage, batch_size=batch_size
        )

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(
            list(queries),
            max_length=self.max_length_query,
            instruction=self.instruction,
            batch_size=self.batch_size,
        )

    def search(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        query_embeddings = self.encode_queries(queries)
        results: list[np.ndarray] = []
        docs = self.corpus_embeddings
        for start in range(0, len(query_embeddings), self.query_block):
            block = query_embeddings[start : start + self.query_block]
            parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in block]
            for lo in range(0, docs.shape[0], self.corpus_chunk):
                chunk_ids = np.arange(lo, min(lo + self.corpus_chunk, docs.shape[0]))
                sims = block @ docs[lo : lo + self.corpus_chunk].T  # (queries, chunk docs)
                for row, row_sims in enumerate(sims):
                    best = top_k(row_sims, k, index=chunk_ids)
                    parts[row].append((chunk_ids[best], row_sims[best]))
            for row_parts in parts:
                idx = np.concatenate([ids for ids, _ in row_parts])
                scores = np.concatenate([sc for _, sc in row_parts])
                results.append(idx[top_k(scores, k, index=idx)].astype(np.int64))
        return results


class FusedRetriever:
    """Reciprocal-rank fusion: a document's score is the sum over retrievers of 1 / (60 + rank)
    for the retrievers that rank it in their top ``k``; the fused list is cut at ``k``."""

    def __init__(self, retrievers: Sequence[Retriever]) -> None:
        self.retrievers = list(retrievers)

    def search(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        rankings = [retriever.search(queries, k) for retriever in self.retrievers]
        results = []
        for per_retriever in zip(*rankings):
            fused: dict[int, float] = {}
            for ranking in per_retriever:
                for rank, doc in enumerate(ranking.tolist(), start=1):
                    fused[doc] = fused.get(doc, 0.0) + 1.0 / (RRF_K + rank)
            docs = np.fromiter(fused, dtype=np.int64, count=len(fused))
            scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
            results.append(docs[top_k(scores, k, index=docs)])
        return results


def build_retriever(
    method: Method,
    corpus_texts: Sequence[str],
    *,
    encoder: TextEncoder | None = None,
    max_length_query: int = 64,
    max_length_passage: int = 256,
    instruction: str = "",
    batch_size: int = 64,
) -> Retriever:
    """The retriever of ``mining.method``; ``dense`` and ``both`` need an encoder."""
    if method == "bm25":
        return BM25Retriever(corpus_texts)
    if encoder is None:
        raise ValueError(f"mining.method={method!r} needs an encoder")
    dense = DenseRetriever(
        encoder,
        corpus_texts,
        max_length_query=max_length_query,
        max_length_passage=max_length_passage,
        instruction=instruction,
        batch_size=batch_size,
    )
    if method == "dense":
        return dense
    return FusedRetriever([BM25Retriever(corpus_texts), dense])
