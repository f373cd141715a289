"""Dev evaluation inside training: STS-B dev Spearman and IR dev nDCG@10, their mean, any extra dev
benchmarks the objective names (``dev:<benchmark>``, e.g. out-of-domain retrieval) and the weighted
dev objective (``train.objective``; the default checkpoint metric). Dev data only — never a test split.

The IR dev set is the held-out slice of the training queries (``mined/ir_dev.json``). Searching the
whole corpus every K steps would dominate a CPU run, so the in-loop search may run over a fixed BM25
pool (``train.dev_ir_pool``; see ``pipeline.eval.benchmarks.bm25_pool``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.config import (
    DEV_BENCHMARK_PREFIX,
    DEV_METRICS,
    HEADLINE_METRIC,
    TextSettings,
    objective_key,
)
from pipeline.eval.benchmarks import IrData, StsData, score
from pipeline.model.encoder import Encoder


@dataclass(frozen=True)
class DevData:
    """What every in-loop evaluation scores: STS dev pairs and an IR dev slice (either may be None),
    and the extra dev benchmarks of the objective by metric name (``dev:<benchmark>``)."""

    sts: StsData | None
    ir: IrData | None
    extra: dict[str, StsData | IrData] = field(default_factory=dict)


def evaluate_dev(
    encoder: Encoder,
    dev: DevData,
    text: TextSettings,
    *,
    batch_size: int = 64,
    objective: dict[str, float] | None = None,
) -> dict[str, float]:
    """``dev_sts_spearman``, ``dev_ir_ndcg@10`` (x100), ``dev_mean`` of those two where present, one
    ``dev:<benchmark>`` headline score per extra dev set plus each ``dev:<benchmark>:<metric>`` the
    objective names, and ``dev_objective`` (see :func:`dev_objective`; the plain mean of the two when
    ``objective`` is None). Each set is scored once, whatever number of its metrics is asked."""
    sets = {"dev_sts_spearman": dev.sts, "dev_ir_ndcg@10": dev.ir, **dev.extra}
    asked = [key for key in objective or {} if objective_key(key)[1] is not None]
    out = {}
    for name, data in sets.items():
        if data is None:
            continue
        metrics = score(encoder, data, text, batch_size=batch_size)
        out[name] = metrics[HEADLINE_METRIC["sts" if isinstance(data, StsData) else "ir"]]
        for key in asked:
            bench, metric = objective_key(key)
            if name == DEV_BENCHMARK_PREFIX + bench:
                out[key] = metrics[metric]
    if out:
        in_domain = [out[name] for name in DEV_METRICS if name in out]
        if in_domain:
            out["dev_mean"] = float(np.mean(in_domain))
        out["dev_objective"] = dev_objective(out, objective)
    return out


def dev_objective(metrics: dict[str, float], weights: dict[str, float] | None) -> float:
    """The weighted mean of the dev metrics present in ``metrics``, weights renormalised over them
    (``None``: equal weights). A run without IR dev data is then ranked on STS alone, and so on."""
    weights = weights or dict.fromkeys(DEV_METRICS, 1.0)
    present = {name: w for name, w in weights.items() if name in metrics and w > 0}
    if not present:
        raise ValueError(f"no dev metric of the objective {weights} in {sorted(metrics)}")
    total = sum(present.values())
    return float(sum(metrics[name] * w for name, w in present.items()) / total)
