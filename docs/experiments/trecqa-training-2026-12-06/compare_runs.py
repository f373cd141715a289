"""Paired test of two runs' registered models on the held-out retrieval queries they share.

    python compare_runs.py paired.json <before held_out_queries.json> <after held_out_queries.json>

Each file is a run's ``eval/held_out_queries.json`` (model -> benchmark -> query -> metric). For
every benchmark and metric of the held-out rule, prints and writes ``after − before`` and
``after − base`` with ``pipeline.eval.paired.paired_difference`` (95% BCa interval, sign-flip p).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from pipeline.config import HELD_OUT_METRICS
from pipeline.eval.paired import paired_difference


def registered(queries: dict) -> dict:
    """The run's one scored model besides the base."""
    (name,) = [model for model in queries if model != "base"]
    return queries[name]


def main(out: str, before_path: str, after_path: str) -> None:
    before, after = (json.loads(Path(path).read_text()) for path in (before_path, after_path))
    results = {}
    for bench, per_query in registered(after).items():
        ids = sorted(per_query)
        for metric in HELD_OUT_METRICS["ir"]:
            scores = {
                "after": [per_query[q][metric] for q in ids],
                "before": [registered(before)[bench][q][metric] for q in ids],
                "base": [after["base"][bench][q][metric] for q in ids],
            }
            for other in ("before", "base"):
                test = paired_difference(scores["after"], scores[other])
                results[f"{bench} {metric} after - {other}"] = asdict(test)
                print(
                    f"{bench} {metric:8s} after - {other:6s} {test.mean:+6.2f} "
                    f"[{test.low:+6.2f}, {test.high:+6.2f}] p={test.p:.3f} "
                    f"won {test.won} lost {test.lost} tied {test.tied}"
                )
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
