"""The quick demo's choices (``configs/demo.yaml``: one ``joint`` run, fusion of its own kept
checkpoints, passages cut shorter in training only, test benchmarks for the base and the registered
model alone) run through the real main job on the smoke data and model.

The overrides are read from ``configs/demo.yaml`` itself, so this test follows the preset; only the
step-count and length settings that a 26-step smoke run cannot take as they are get smoke values, and
its data sources and benchmarks are cut to a smoke-sized slice of rows each."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.config import CONFIG_DIR, load_config

SMOKE_SIZED = {
    "train.eval_every": 10,  # the smoke run has about 26 steps (the demo's 150 would never fire)
    "train.max_length_passage": 32,  # training-only passage length, below the smoke model's 64
}

SMOKE_ROWS = 96  # records per training source, pairs / queries per benchmark (each keeps its skip)


def _smoke_slice(entries: list[dict]) -> list[dict]:
    return [
        {**entry, "limit": min(entry.get("limit") or SMOKE_ROWS, SMOKE_ROWS)} for entry in entries
    ]


def demo_overrides() -> list[str]:
    """Every key ``configs/demo.yaml`` sets over its base, and the demo's data sources and
    benchmarks (its own or inherited), as ``a.b=value`` overrides."""
    preset = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    preset.pop("base")
    flat = {
        f"{section}.{key}": value
        for section, values in preset.items()
        for key, value in values.items()
    }
    flat.update(SMOKE_SIZED)
    demo = load_config("demo")
    lists = {"data.sources": demo.data.sources, "eval.benchmarks": demo.eval.benchmarks}
    flat.update(
        {
            key: _smoke_slice([e.model_dump(mode="json", exclude_defaults=True) for e in v])
            for key, v in lists.items()
        }
    )
    return [f"{key}={json.dumps(value)}" for key, value in flat.items()]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, data_root, ray_session):
    from jobs import pipeline

    root = tmp_path_factory.mktemp("quick")
    cfg = load_config(
        "smoke",
        [f"run.root={root}", f"data.root={data_root}", "run.name=quick", *demo_overrides()],
    )
    return cfg, pipeline.main(cfg), root / "quick"


def test_quick_preset_trains_joint_and_fuses_its_own_checkpoints(quick_run):
    cfg, outcome, run_dir = quick_run
    assert cfg.train.modes == ["joint"] and cfg.fusion.candidates == "top_k"
    selection = json.loads((run_dir / "fuse" / "selection.json").read_text())
    kept = json.loads((run_dir / "train" / "joint" / "done.json").read_text())["checkpoints"]
    assert len(kept) == 2  # evaluated at step 10 or 20 and at the end: keep_top_k ranks them
    assert set(selection["candidate_scores"]) == set(kept)
    assert {name.split("(")[0] for name in selection["scores"]} == set(cfg.fusion.methods)
    assert outcome["chosen"].startswith("fused:")


def test_quick_preset_scores_only_base_and_registered_on_test(quick_run):
    _, outcome, run_dir = quick_run
    results = json.loads((run_dir / "eval.json").read_text())
    assert set(results) == {"base", outcome["chosen"]}
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "Scored on dev only (`eval.trained_models: false`): joint;" in report


def test_quick_preset_trains_on_shorter_passages_than_it_evaluates(quick_run):
    cfg, _, run_dir = quick_run
    assert cfg.train.passage_length(cfg.model) == 32 < cfg.model.max_length_passage == 64
    final = json.loads((run_dir / "final" / "sentence_bert_config.json").read_text())
    assert final["max_seq_length"] == 64  # the registered model serves at the evaluated length
