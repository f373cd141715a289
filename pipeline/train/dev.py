"""Dev evaluation inside training: STS-B dev Spearman and IR dev nDCG@10, and their mean (the default
checkpoint metric). Dev data only — never a test split.

The IR dev set is the held-out slice of the training queries (``mined/ir_dev.json``). Searching the
whole corpus every K steps would dominate a CPU run, so the in-loop search runs over a fixed pool:
every dev query's BM25 top ``pool_per_query`` documents plus its relevant ones (``pool_per_query=0``
keeps the whole corpus). The final, reported dev numbers of ``jobs.evaluate`` use the whole corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.beir import load_corpus
from pipeline.data.mining_retrieval import BM25Retriever
from pipeline.eval.benchmarks import IrData, StsData, evaluate_ir, evaluate_sts
from pipeline.model.encoder import Encoder


@dataclass(frozen=True)
class DevData:
    """What every in-loop evaluation scores: STS dev pairs and an IR dev slice (either may be None)."""

    sts: StsData | None
    ir: IrData | None


def ir_dev_pool(ir_dev: dict, *, pool_per_query: int) -> IrData:
    """The IR dev slice (the ``ir_dev.json`` mapping) over its corpus, cut to a BM25 candidate pool."""
    corpus = load_corpus(ir_dev["source_path"])
    doc_ids = list(corpus)
    texts = [f"{t} {x}" if t else x for t, x in (corpus[d] for d in doc_ids)]
    queries, qrels = ir_dev["queries"], ir_dev["qrels"]
    if pool_per_query > 0:
        keep = {d for rel in qrels.values() for d in rel if d in corpus}
        hits = BM25Retriever(texts).search(list(queries.values()), pool_per_query)
        keep.update(doc_ids[int(row)] for rows in hits for row in rows)
        rows = [i for i, d in enumerate(doc_ids) if d in keep]
        doc_ids, texts = [doc_ids[i] for i in rows], [texts[i] for i in rows]
    return IrData(queries=queries, qrels=qrels, doc_ids=doc_ids, doc_texts=texts)


def evaluate_dev(
    encoder: Encoder,
    dev: DevData,
    *,
    max_length_query: int,
    max_length_passage: int,
    max_length_sts: int,
    instruction_ir: str = "",
    instruction_sts: str = "",
    batch_size: int = 64,
) -> dict[str, float]:
    """``dev_sts_spearman``, ``dev_ir_ndcg@10`` (x100) and ``dev_mean`` of the ones available."""
    out: dict[str, float] = {}
    if dev.sts is not None:
        scores = evaluate_sts(
            encoder,
            dev.sts,
            max_length=max_length_sts,
            instruction=instruction_sts,
            batch_size=batch_size,
        )
        out["dev_sts_spearman"] = scores["spearman"]
    if dev.ir is not None:
        scores = evaluate_ir(
            encoder,
            dev.ir,
            max_length_query=max_length_query,
            max_length_passage=max_length_passage,
            instruction=instruction_ir,
            batch_size=batch_size,
        )
        out["dev_ir_ndcg@10"] = scores["ndcg@10"]
    if out:
        out["dev_mean"] = float(np.mean(list(out.values())))
    return out
