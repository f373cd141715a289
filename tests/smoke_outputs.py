"""What a finished smoke pipeline run leaves in its run directory (shared by the tests that run the
whole job in different ways, so they check the same things)."""

from __future__ import annotations

import json
from pathlib import Path

ARTIFACTS = ("report.md", "tradeoff.png", "eval.json", "final/model.safetensors", "mlflow.db")


def assert_smoke_run_outputs(run_dir: Path) -> dict:
    """The report, plot, results, final model and MLflow store exist, ``eval.json`` scores the base
    and the joint model on STS dev, the final model keeps the preset's passage length, and the
    report checks the held-out benchmark with the paired test of its per-query scores; returns
    ``eval.json``."""
    for artifact in ARTIFACTS:
        assert (run_dir / artifact).is_file(), artifact
    results = json.loads((run_dir / "eval.json").read_text())
    assert {"base", "joint"} <= set(results)
    assert any(name.startswith("fused:") for name in results)
    assert 0.0 < abs(results["joint"]["stsb-dev"]["spearman"]) <= 100.0
    assert 0.0 <= results["base"]["trecqa-dev"]["ndcg@10"] <= 100.0
    # the registered model truncates passages where training and evaluation did (smoke: 64 tokens)
    st_config = json.loads((run_dir / "final" / "sentence_bert_config.json").read_text())
    assert st_config["max_seq_length"] == 64
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Held-out benchmarks" in report
    for judged in ("nDCG@10", "MAP", "MRR@10"):  # held-out retrieval is judged on all three
        assert f"vs base on trecqa-dev {judged}:" in report
    # ... each with the paired test of its per-query scores (eval/held_out_queries.json)
    queries = json.loads((run_dir / "eval" / "held_out_queries.json").read_text())
    assert set(queries["base"]["trecqa-dev"]) == set(queries["joint"]["trecqa-dev"])
    assert report.count("; per query: 95% CI") == 3
    # TREC-QA train is dev data of the objective: reported apart from the held-out sets
    extra = report.split("## Extra dev benchmarks of the objective", 1)[1].split("\n## ", 1)[0]
    assert "trecqa-train" in extra and "trecqa-dev" not in extra
    return results
