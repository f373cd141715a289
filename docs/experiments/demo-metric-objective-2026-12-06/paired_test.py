"""Is a model's loss against the base on TREC-QA retrieval more than noise? Scores each query of
TREC-QA dev (held out) and TREC-QA train (out-of-domain dev) for the base and each given model, then
tests the per-query differences (model - base) on nDCG@10, MAP and MRR@10 with
``pipeline.eval.paired.paired_difference`` (mean, 95% BCa bootstrap interval, two-sided sign-flip
permutation test, queries won, lost and tied; the report's held-out check now runs the same test).
Reads only; chooses nothing.

    PYTHONPATH=. python docs/experiments/demo-metric-objective-2026-12-06/paired_test.py OUT.json BASE MODEL...
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.eval.benchmarks import load_ir, score
from pipeline.eval.paired import paired_difference
from pipeline.model.encoder import Encoder

BENCHMARKS = ("trecqa-dev", "trecqa-train")
METRICS = ("ndcg@10", "map", "mrr@10")


def per_query(folder: str, cfg, data) -> dict[str, dict[str, float]]:
    """{query id: metrics} of one encoder folder on one loaded retrieval benchmark (the evaluate
    stage's own search and metrics)."""
    queries: dict[str, dict[str, float]] = {}
    encoder = Encoder.from_pretrained(folder, device="cpu")
    score(encoder, data, cfg.model.text_settings(), per_query=queries)
    return queries


def main(out: str, base: str, *models: str) -> None:
    cfg = load_config("demo")
    benches = {b.name: b for b in cfg.eval.benchmarks}
    report = {}
    for name in BENCHMARKS:
        data = load_ir(benches[name], cfg.data.root, cfg.run.dir)
        base_q = per_query(base, cfg, data)
        qids = sorted(base_q)
        for model in models:
            model_q = per_query(model, cfg, data)
            for metric in METRICS:
                test = paired_difference(
                    [model_q[q][metric] for q in qids], [base_q[q][metric] for q in qids]
                )
                row = {"queries": len(qids), **dataclasses.asdict(test)}
                row["ci_low"], row["ci_high"] = row.pop("low"), row.pop("high")
                report[f"{model} | {name} | {metric}"] = row
                print(
                    f"{Path(model).name} {name} {metric}: {row['mean']:+.2f} "
                    f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] p={row['p']:.3f} "
                    f"won/lost/tied {row['won']}/{row['lost']}/{row['tied']} of {len(qids)}",
                    flush=True,
                )
    Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
