"""Retrieval evaluation: exact cosine top-k over a corpus streamed in chunks, and trec_eval metrics.

The top-k keeps a running [Q, k] buffer and never holds the full [Q, N] score matrix. Metrics come from
``pytrec_eval`` (trec_eval semantics, graded relevance): nDCG@10 (``ndcg_cut.10``), Recall@100
(``recall.100``), MAP (``map``, over the retrieved top-k) and MRR@10 (``recip_rank`` on the run cut to its
10 best documents; trec_eval's ``recip_rank`` has no cut-off of its own). All x100, averaged over the
queries that have qrels (a query with nothing retrieved counts 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytrec_eval
import torch
import torch.nn.functional as F


class RunningTopK:
    """Exact top-k cosine neighbours of fixed queries over document chunks fed one at a time."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)  # [Q, D]
        self.k = k
        n = self.queries.shape[0]
        self.scores = torch.full((n, 0), float("-inf"))  # [Q, <=k]
        self.indices = torch.zeros((n, 0), dtype=torch.long)  # [Q, <=k] global document rows
        self.seen = 0

    def add(self, docs: np.ndarray) -> None:
        """Score one chunk of documents [C, D] (rows numbered after all previous chunks)."""
        docs_t = F.normalize(torch.as_tensor(docs, dtype=torch.float32), dim=-1)  # [C, D]
        chunk_scores = self.queries @ docs_t.T  # [Q, C]
        take = min(self.k, chunk_scores.shape[1])
        top_scores, top_rows = chunk_scores.topk(take, dim=1)  # [Q, take]
        merged_scores = torch.cat([self.scores, top_scores], dim=1)  # [Q, <=k + take]
        merged_rows = torch.cat([self.indices, top_rows + self.seen], dim=1)
        keep = min(self.k, merged_scores.shape[1])
        self.scores, order = merged_scores.topk(keep, dim=1)  # [Q, keep]
        self.indices = merged_rows.gather(1, order)
        self.seen += docs_t.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], document rows [Q, k]), best first."""
        return self.scores.numpy(), self.indices.numpy()


def exact_topk(
    queries: np.ndarray, docs: np.ndarray, k: int, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of each query among ``docs``, scoring ``chunk`` documents at a time."""
    top = RunningTopK(queries, k)
    for start in range(0, len(docs), chunk):
        top.add(docs[start : start + chunk])
    return top.result()


def build_run(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    scores: np.ndarray,
    rows: np.ndarray,
    k: int,
) -> dict[str, dict[str, float]]:
    """{query id: {doc id: score}} with each query's k best, dropping a document whose id equals the query
    id (BEIR/MTEB's self-hit rule: retrieve k + 1 to keep k)."""
    run: dict[str, dict[str, float]] = {}
    for qid, q_scores, q_rows in zip(query_ids, scores, rows):
        hits = [(doc_ids[r], float(s)) for s, r in zip(q_scores, q_rows) if doc_ids[r] != qid]
        run[qid] = dict(hits[:k])
    return run


def _cut(run: Mapping[str, Mapping[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Each query's k best documents (score descending, ties by doc id descending as trec_eval)."""
    return {
        qid: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k])
        for qid, docs in run.items()
    }


TREC_MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "map": "map"}


def per_query_ir_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """{query id: {``ndcg@10``, ``recall@100``, ``mrr@10``, ``map``: value x100}} for every query with
    qrels (trec_eval semantics; a query the run misses scores 0): what paired tests between models use."""
    qrels = {qid: {d: int(g) for d, g in docs.items()} for qid, docs in qrels.items()}
    run = {qid: dict(docs) for qid, docs in run.items() if qid in qrels}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_cut(run, 10))
    return {
        qid: {
            **{name: 100.0 * full.get(qid, {}).get(m, 0.0) for name, m in TREC_MEASURES.items()},
            "mrr@10": 100.0 * top10.get(qid, {}).get("recip_rank", 0.0),
        }
        for qid in qrels
    }


def ir_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """``ndcg@10``, ``recall@100``, ``mrr@10``, ``map`` x100 (trec_eval semantics): the means over the
    queries of :func:`per_query_ir_metrics`."""
    return mean_ir_metrics(per_query_ir_metrics(qrels, run))


def mean_ir_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The means over the queries of :func:`per_query_ir_metrics` (0 for no query)."""
    names = ("ndcg@10", "recall@100", "mrr@10", "map")
    if not per_query:
        return dict.fromkeys(names, 0.0)
    return {name: float(np.mean([q[name] for q in per_query.values()])) for name in names}
