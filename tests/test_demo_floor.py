"""``bench/demo_floor.py``: the work each pipeline stage puts through the encoder (dev scorings,
models scored, the share of each task's rows a mode trains on) and the quick run's report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import demo_floor  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.prepare import prepared_shards  # noqa: E402


def test_fuse_scorings_count_every_variant_once():
    reproduce = load_config("reproduce")
    # delta p=1,2 + soup + task arithmetic λ=0.5,1 + ties; greedy soup's one trial is the soup
    assert demo_floor.fuse_scorings(reproduce) == 6
    three = load_config("reproduce", ["fusion.modes=[sts_only,ir_only,joint]"])
    assert demo_floor.fuse_scorings(three) == 6 + 2  # two trial mixtures, neither the soup of all
    assert demo_floor.fuse_scorings(load_config("reproduce", ["fusion.methods=[delta]"])) == 2
    paths = load_config("reproduce", ["fusion.candidates=paths", "fusion.paths=[a,b]"])
    assert demo_floor.fuse_scorings(paths) == 6 + 2  # folders from elsewhere are scored again


def test_models_scored_follow_eval_fused_models():
    assert demo_floor.models_scored(load_config("reproduce")) == 1 + 4 + 1
    assert (
        demo_floor.models_scored(load_config("reproduce", ["eval.fused_models=all"])) == 1 + 4 + 5
    )
    # the quick demo: base and the registered model on test; joint's dev scores come from training
    assert demo_floor.models_scored(load_config("demo")) == 2


def test_dev_evaluations_every_k_steps_and_at_the_end():
    assert demo_floor.dev_evaluations(106, 0) == 1
    assert demo_floor.dev_evaluations(100, 50) == 2  # step 100 is both
    assert demo_floor.dev_evaluations(101, 50) == 3


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_root):
    """One ``--quick`` run (smoke preset: prepare, mine, count, measure) and its config."""
    root = tmp_path_factory.mktemp("floor")
    overrides = [f"run.root={root}", f"data.root={data_root}"]
    out = root / "floor.json"
    demo_floor.main(["--quick", *overrides, "--out", str(out)])
    return load_config("smoke", demo_floor.QUICK + overrides), json.loads(out.read_text())


def test_a_mode_trains_on_the_rows_its_schedule_uses(quick):
    cfg, _ = quick
    t = cfg.train
    rows = {
        task: sum(pq.read_metadata(p).num_rows for p in paths)
        for task, paths in demo_floor.training_shards(cfg, ("ir", "sts")).items()
    }
    batches = {"ir": rows["ir"] // t.ir_global_batch, "sts": rows["sts"] // t.sts_global_batch}
    steps, shares = demo_floor.mode_usage(cfg, "sts_only")
    assert steps == batches["sts"]
    assert shares == {"sts": batches["sts"] * t.sts_global_batch / rows["sts"]}
    steps, shares = demo_floor.mode_usage(cfg, "mixed")  # one batch of each task per step
    assert steps == min(batches.values())
    assert shares["sts"] == steps * t.sts_global_batch / rows["sts"]
    capped = cfg.model_copy(update={"train": t.model_copy(update={"max_steps": 3})})
    steps, shares = demo_floor.mode_usage(capped, "joint")
    assert steps == 3
    assert sum(
        s * rows[k] / {"ir": t.ir_global_batch, "sts": t.sts_global_batch}[k]
        for k, s in shares.items()
    ) == pytest.approx(3)


def test_training_texts_are_every_sentence_or_passage(quick):
    cfg, _ = quick
    sts_rows = sum(
        pq.read_metadata(p).num_rows
        for p in prepared_shards(str(Path(cfg.run.dir) / "prepared"))["sts"]
    )
    assert len(demo_floor.task_texts(cfg, "sts")) == 2 * sts_rows
    ir = pq.read_table(demo_floor.training_shards(cfg, ("ir",))["ir"])
    passages = sum(len(p) for p in ir["positives"].to_pylist()) + sum(
        len(n) for n in ir["negatives"].to_pylist()
    )
    assert len(demo_floor.task_texts(cfg, "ir")) == ir.num_rows + passages


def test_quick_report_adds_up(quick):
    _, report = quick
    stages = report["stages"]
    assert set(stages) == {"train joint", "fuse", "evaluate", "all"}  # smoke trains joint
    for key in ("TFLOP", "min at peak", "min at encoder rate"):
        assert stages["all"][key] == pytest.approx(
            sum(stages[s][key] for s in stages if s != "all")
        )
    work = report["work_flops"]
    assert all(
        work["train joint"][kind] > 0 for kind in demo_floor.KINDS
    )  # dev scored at the end too
    for stage in ("fuse", "evaluate"):  # inference only
        assert work[stage]["train passages"] == work[stage]["train short texts"] == 0
        assert work[stage]["encode passages"] > 0 and work[stage]["encode short texts"] > 0
    peak = report["rates_gflops"]["peak"] * 1e9
    assert stages["all"]["min at peak"] == pytest.approx(
        sum(sum(parts.values()) for parts in work.values()) / peak / 60
    )
    # no stage runs faster than the machine's matrix-product peak
    assert all(
        rate < report["rates_gflops"]["peak"]
        for rate in [v for k, v in report["rates_gflops"].items() if k != "peak"]
    )
    assert report["ratio"] == pytest.approx(stages["all"]["min at encoder rate"] / 60)
