"""The report: Pareto front, comparison tables, the computed no-negative-transfer sentences, the plot."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pipeline.report import (
    comparison_table,
    dev_table,
    held_out_check,
    no_negative_transfer,
    pareto_front,
    plot_tradeoff,
    render_report,
    stage_table,
    write_report,
)
from pipeline.report.tables import held_out_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model(sts: float, ndcg: float | None, dev: tuple[float, float] | None = None) -> dict:
    out = {"stsb-test": {"spearman": sts, "pearson": sts - 1, "alignment": 0.5, "avg_cosine": 0.1}}
    if ndcg is not None:
        out["scifact-test"] = {"ndcg@10": ndcg, "recall@100": ndcg + 25, "mrr@10": ndcg - 4}
    if dev is not None:
        out["stsb-dev"] = {"spearman": dev[0]}
        out["ir-dev"] = {"ndcg@10": dev[1]}
    return out


@pytest.fixture
def results() -> dict:
    return {
        "base": _model(82.03, 64.51, (86.7, 60.0)),
        "sts_only": _model(84.30, 63.20, (88.1, 59.0)),
        "ir_only": _model(82.60, 68.55, (86.0, 66.0)),
        "mixed": _model(84.00, 68.50, (87.9, 65.7)),
        "joint": _model(84.10, 68.20, (88.0, 65.9)),
        "fused:delta": _model(84.50, 68.60, (88.3, 66.3)),
        "fused:ties": _model(84.20, None),
    }


def _row(table: str, model: str) -> list[str]:
    line = next(r for r in table.splitlines() if r.startswith(f"| {model} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_pareto_front_hand_example():
    points = {
        "a": (1.0, 5.0),
        "b": (2.0, 4.0),
        "b_twin": (2.0, 4.0),  # identical points: both stay
        "c": (3.0, 1.0),
        "dominated": (1.5, 3.0),  # below b on both
        "tie_x_lower_y": (3.0, 0.5),  # same x as c, lower y: dominated
        "tie_y_lower_x": (0.5, 5.0),  # same y as a, lower x: dominated
    }
    assert pareto_front(points) == ["a", "b", "b_twin", "c"]
    assert pareto_front({}) == []
    assert pareto_front({"only": (0.0, 0.0)}) == ["only"]


def test_comparison_table_rows_bold_and_missing(results):
    table = comparison_table(results, chosen="fused:delta")
    scores = table.split("\n\n")[0].splitlines()
    assert len(scores) == 2 + len(results)  # header, separator, one row per model
    delta = _row(table, "fused:delta (registered)")
    assert delta[1] == "**84.50**" and delta[2] == "**68.60**"
    assert delta[5] == f"**{(84.50 + 68.60) / 2:.2f}**"
    assert _row(table, "base")[1] == "82.03"
    ties = _row(table, "fused:ties")
    assert ties[1] == "84.20" and ties[2:] == ["–"] * 4
    assert "Embedding geometry on stsb-test" in table
    assert "Embedding geometry on scifact-test" not in table  # no model has IR geometry


def test_bold_marks_every_tie(results):
    results["joint"]["stsb-test"]["spearman"] = 84.50
    table = comparison_table(results)
    assert _row(table, "joint")[1] == "**84.50**"
    assert _row(table, "fused:delta")[1] == "**84.50**"


def test_dev_table_marks_registered_variant(results):
    selection = {"delta(power=2.0)": 77.3, "delta(power=1.0)": 77.1, "soup": 77.0}
    table = dev_table(results, selection, chosen="fused:delta")
    assert _row(table, "fused:delta (registered)")[3] == "**77.30**"
    assert _row(table, "delta(power=2.0) (registered)") == [
        "delta(power=2.0) (registered)",
        "**77.30**",
    ]
    assert _row(table, "fused:ties")[1:] == ["–"] * 3


def test_stage_table_total():
    table = stage_table({"train": 125.0, "fuse": 10.4})
    assert "| train | 125.0 | 2m 05s |" in table
    assert "| **total** | **135.4** | **2m 15s** |" in table


def test_no_negative_transfer_flips_with_the_numbers(results):
    lines = no_negative_transfer(results)
    assert lines[0].startswith("joint is within 0.3 of sts_only")  # 84.10 vs 84.30
    assert "(-0.20)" in lines[0]
    assert lines[1].startswith("joint is not within 0.3 of ir_only")  # 68.20 vs 68.55
    worse = copy.deepcopy(results)
    worse["joint"]["stsb-test"]["spearman"] = 83.80  # 0.5 below sts_only
    assert no_negative_transfer(worse)[0].startswith("joint is not within 0.3 of sts_only")
    assert "negative transfer of 0.50 points" in no_negative_transfer(worse)[0]
    worse["joint"]["stsb-test"]["spearman"] = 84.00  # exactly 0.3 below: still within
    assert no_negative_transfer(worse)[0].startswith("joint is within 0.3 of sts_only")


def test_no_negative_transfer_mixed_vs_joint_and_missing(results):
    lines = no_negative_transfer(results)
    assert lines[2].startswith("mixed loses to joint on stsb-test Spearman")
    assert lines[3].startswith("mixed does not lose to joint on scifact-test nDCG@10")
    results["mixed"]["stsb-test"]["spearman"] = 84.10
    assert no_negative_transfer(results)[2].endswith("(+0.00), a tie.")
    del results["ir_only"]
    assert "not measured (ir_only missing)" in no_negative_transfer(results)[1]


def test_plot_tradeoff_writes_png_with_chosen(results, tmp_path):
    out = tmp_path / "sub" / "tradeoff.png"
    fig = plot_tradeoff(results, str(out), chosen="fused:delta")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert "fused:delta" in labels and "base" in labels
    assert "fused:ties" not in labels  # no IR score: not plotted
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "registered" in legend and "Pareto front" in legend


def test_write_report(results, tmp_path):
    paths = write_report(
        str(tmp_path),
        results,
        chosen="fused:delta",
        dev_selection={"fused:delta": 77.3, "fused:soup": 77.0},
        stage_times={"train": 60.0},
        notes=["same steps per task"],
        title="Demo",
        held_out={"stsb-test": "sts"},
    )
    text = Path(paths["report"]).read_text(encoding="utf-8")
    assert "## Held-out benchmarks" in text
    assert "fused:delta vs base on stsb-test Spearman: 84.50 vs 82.03 (+2.47), within" in text
    assert text.startswith("# Demo\n")
    assert "![IR vs STS trade-off](tradeoff.png)" in text
    assert "is the best of the 2 models scored on dev" in text
    assert "above every single checkpoint (best of them: joint" in text
    assert "- same steps per task" in text
    assert "joint is within 0.3 of sts_only" in text
    assert Path(paths["tradeoff"]).read_bytes().startswith(PNG_MAGIC)


def test_a_run_without_the_single_task_modes_says_so_once(results, tmp_path):
    quick = {name: results[name] for name in ("base", "fused:delta")}  # the quick demo's scoring
    paths = write_report(
        str(tmp_path),
        quick,
        chosen="fused:delta",
        dev_selection={"fused:delta": 77.3, "candidate joint:step_000285": 77.1},
        stage_times={"train": 60.0},
        notes=[],
        title="Quick",
    )
    text = Path(paths["report"]).read_text(encoding="utf-8")
    section = text.split("## Negative transfer check\n\n")[1].split("\n\n")[0]
    assert section.startswith("Not measured in this run: it needs `joint` beside")
    assert "missing" not in text


def test_training_notes_count_steps_per_task(tmp_path):
    from pipeline.report.training import training_notes

    rows = [
        {"step": 1, "task": "ir", "step_seconds": 30.0},
        {"step": 2, "task": "sts", "step_seconds": 30.0},
        {
            "step": 3,
            "task": "sts",
            "step_seconds": 60.0,
            "dev_mean": 50.0,
            "dev_sts_spearman": 80.0,
        },
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (note,) = training_notes({"joint": str(path)})
    assert "1 ir + 2 sts steps" in note
    assert "2.0 min" in note
    assert "dev_sts_spearman 80.00" in note


def test_dev_curves_keep_the_evaluation_steps_per_mode(tmp_path):
    from pipeline.report.training import dev_curves, plot_dev_curves

    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "task": "sts", "loss": 1.0},
        {"step": 2, "task": "ir", "loss": 0.9, "dev_sts_spearman": 80.0, "dev_ir_ndcg@10": 60.0},
        {"step": 3, "task": "sts", "loss": 0.8},
        {"step": 4, "task": "sts", "loss": 0.7, "dev_sts_spearman": 81.5},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = dev_curves({"joint": str(path)})
    assert curves == {
        "joint": [
            {"step": 2, "dev_sts_spearman": 80.0, "dev_ir_ndcg@10": 60.0},
            {"step": 4, "dev_sts_spearman": 81.5},
        ]
    }
    plot_dev_curves({"joint": str(path)}, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_held_out_check_against_the_base(results):
    """Retrieval is judged on nDCG@10, MAP and MRR@10: a model that holds nDCG@10 but loses the first
    correct answer (MRR) fails, as a scorer quoting MRR would see."""
    scores = {"base": (40.0, 70.0, 60.0, 66.9), "fused:delta": (39.5, 69.5, 59.2, 63.5)}
    for model, (snli, ndcg, map_, mrr) in scores.items():
        results[model]["snli-test"] = {"spearman": snli}
        results[model]["trecqa-dev"] = {"ndcg@10": ndcg, "map": map_, "mrr@10": mrr}
    held_out = {"snli-test": "sts", "trecqa-dev": "ir"}
    lines = held_out_check(results, held_out, chosen="fused:delta", tolerance=1.0)
    assert lines == [
        "fused:delta vs base on snli-test Spearman: 39.50 vs 40.00 (-0.50), within 1 point(s).",
        "fused:delta vs base on trecqa-dev nDCG@10: 69.50 vs 70.00 (-0.50), within 1 point(s).",
        "fused:delta vs base on trecqa-dev MAP: 59.20 vs 60.00 (-0.80), within 1 point(s).",
        "fused:delta vs base on trecqa-dev MRR@10: 63.50 vs 66.90 (-3.40), more than 1 below.",
    ]
    del results["base"]["trecqa-dev"]["map"]
    lines = held_out_check(results, held_out, chosen="fused:delta")
    assert "trecqa-dev MAP: not measured (base missing)" in lines[2]


def test_held_out_check_adds_the_paired_test_of_the_per_query_scores(results):
    """With per-query scores the retrieval sentences say how much of the difference is noise: four
    queries, the registered model loses one first answer (MRR 1 -> 0.5) and ties the other three."""
    results["base"]["trecqa-dev"] = {"mrr@10": 100.0}
    results["fused:delta"]["trecqa-dev"] = {"mrr@10": 87.5}
    per_query = {
        "base": {"trecqa-dev": {q: {"mrr@10": 100.0} for q in "abcd"}},
        "fused:delta": {
            "trecqa-dev": {"a": {"mrr@10": 50.0}} | {q: {"mrr@10": 100.0} for q in "bcd"}
        },
    }
    held_out = {"trecqa-dev": "ir"}
    line = held_out_check(results, held_out, chosen="fused:delta", queries=per_query)[-1]
    assert line.startswith("fused:delta vs base on trecqa-dev MRR@10: 87.50 vs 100.00 (-12.50)")
    # the sign flips of one nonzero difference: mean -12.5 or +12.5, each half the time: p = 1
    assert line.endswith("p = 1.00 (0 won, 1 lost, 3 tied of 4).")
    assert "; per query: 95% CI" in line
    # queries of the two models that do not match: no test rather than a wrong one
    per_query["base"]["trecqa-dev"]["e"] = {"mrr@10": 0.0}
    line = held_out_check(results, held_out, chosen="fused:delta", queries=per_query)[-1]
    assert line.endswith("more than 1 below.")


def test_held_out_table_gives_each_model_its_distance_to_the_base(results):
    for model, (ndcg, map_, mrr) in {
        "base": (70.0, 60.0, 66.0),
        "joint": (71.25, 61.0, 66.5),
        "fused:delta": (68.5, 59.5, 62.0),
    }.items():
        results[model]["trecqa-dev"] = {"ndcg@10": ndcg, "map": map_, "mrr@10": mrr}
    table = held_out_table(results, {"trecqa-dev": "ir"}, chosen="fused:delta")
    header = table.splitlines()[0]
    assert "trecqa-dev nDCG@10" in header and "MAP" in header and "MRR@10" in header
    assert _row(table, "base")[1:3] == ["70.00", "0.00"]
    registered = ["68.50", "-1.50", "59.50", "-0.50", "62.00", "-4.00"]
    assert _row(table, "fused:delta (registered)")[1:] == registered
    assert _row(table, "joint")[1:3] == ["**71.25**", "**1.25**"]
    assert _row(table, "sts_only")[1:] == ["–"] * 6  # not scored there


def test_the_objectives_extra_dev_benchmarks_get_their_own_section(results):
    for model, trec in {"base": 70.0, "fused:delta": 72.0}.items():
        results[model]["trecqa-train"] = {"ndcg@10": trec}
    text = render_report(
        results,
        chosen="fused:delta",
        dev_selection={"fused:delta": 77.3},
        stage_times={},
        notes=[],
        title="t",
        held_out={"stsb-test": "sts"},
        objective_dev={"trecqa-train": "ir"},
    )
    extra = text.split("## Extra dev benchmarks of the objective")[1]
    assert "not held out" in extra.splitlines()[0]
    assert "trecqa-train nDCG@10" in extra and "72.00" in extra and "2.00" in extra
    assert "trecqa-train" not in text.split("## Held-out benchmarks")[1].split("## Extra")[0]


def test_dev_selection_names_candidates_by_mode():
    from pipeline.stages.fuse import dev_selection_scores

    candidates = {"joint": "runs/demo/train/joint/best", "ir_only": "runs/demo/train/ir_only/best"}
    selection = {
        "scores": {"greedy_soup": 82.2, "soup": 81.8},
        "candidate_scores": {"runs/demo/train/joint/best": 82.2, "elsewhere/best": 80.0},
    }
    assert dev_selection_scores(selection, candidates) == {
        "greedy_soup": 82.2,
        "soup": 81.8,
        "candidate joint": 82.2,
        "candidate elsewhere/best": 80.0,  # a folder not among the candidates keeps its path
    }
    assert dev_selection_scores({"scores": {"soup": 1.0}}, candidates) == {"soup": 1.0}
