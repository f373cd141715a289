"""The block the main job prints last."""

from __future__ import annotations

from pipeline.report.summary import run_summary


def test_summary_sets_the_registered_model_beside_the_base_on_each_benchmark():
    results = {
        "base": {"stsb-test": {"spearman": 82.03}, "scifact-test": {"ndcg@10": 64.51}},
        "fused:soup": {"stsb-test": {"spearman": 84.5}, "scifact-test": {"ndcg@10": 67.2}},
    }
    block = run_summary(
        run_name="demo",
        seconds=27 * 60 + 5,
        report="runs/demo/report.md",
        final="runs/demo/final",
        registry="registered codiemb-encoder version 1",
        results=results,
        registered="fused:soup",
        kinds={"stsb-test": "sts", "ir-dev": "ir", "scifact-test": "ir"},
    ).splitlines()
    assert block[0] == "======== run demo: done in 27 min ========"
    assert block[1:3] == [
        "report        runs/demo/report.md",
        "final model   runs/demo/final (fused:soup)",
    ]
    rows = block[5:]
    assert [row.split()[0] for row in rows] == ["stsb-test", "scifact-test"]  # ir-dev: not scored
    assert rows[0].split()[-3:] == ["82.03", "84.50", "+2.47"]
    assert rows[1].split()[-3:] == ["64.51", "67.20", "+2.69"]
