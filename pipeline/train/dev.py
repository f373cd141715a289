"""Dev evaluation inside training: STS-B dev Spearman and IR dev nDCG@10, and their mean (the default
checkpoint metric). Dev data only — never a test split.

The IR dev set is the held-out slice of the training queries (``mined/ir_dev.json``). Searching the
whole corpus every K steps would dominate a CPU run, so the in-loop search may run over a fixed BM25
pool (``train.dev_ir_pool``; see ``pipeline.eval.benchmarks.bm25_pool``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.eval.benchmarks import IrData, StsData, evaluate_ir, evaluate_sts
from pipeline.model.encoder import Encoder


@dataclass(frozen=True)
class DevData:
    """What every in-loop evaluation scores: STS dev pairs and an IR dev slice (either may be None)."""

    sts: StsData | None
    ir: IrData | None


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
