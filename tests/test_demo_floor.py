"""``bench/demo_floor.py``: the work each pipeline stage puts through the encoder, checked against
counts made by hand (variants, models, steps and shares of a hand-made schedule, texts of hand-made
shards, FLOPs of a few sentences on a one-layer shape, minutes from round numbers), and the quick
run's report for its shape. No assertion about how fast this machine is."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import demo_floor  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.ray_datasets import TaskBatches  # noqa: E402
from pipeline.eval.benchmarks import IrData, StsData  # noqa: E402
from pipeline.train.dev import DevData  # noqa: E402


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


def test_mode_usage_on_a_hand_counted_schedule(monkeypatch):
    """IR 30 rows and STS 25 rows in global batches of 10: 3 IR and 2 STS batches per epoch (STS
    drops 5 rows); two epochs, sampler round_robin (IR first, alternating until the task whose turn
    it is has none left).

    - joint: I S I S I per epoch -> 10 steps; IR 6 batches = 60 rows = 2.0 epochs of its rows,
      STS 4 batches = 40 of 25 rows = 1.6.
    - joint capped at 4 steps: I S I S -> IR 20/30, STS 20/25.
    - sts_only: 2 steps per epoch -> 4 steps, STS 1.6.
    - mixed: one batch of each task per step, min(3, 2) = 2 steps per epoch -> 4 steps; IR 4
      batches = 40/30, STS 40/25.
    """
    rows = {"ir": 30, "sts": 25}
    monkeypatch.setattr(demo_floor, "training_shards", lambda cfg, tasks: {t: [t] for t in tasks})
    monkeypatch.setattr(
        demo_floor,
        "count_batches",
        lambda shards, gb: {t: TaskBatches(rows[t], gb[t]) for t in shards},
    )
    overrides = ["train.epochs=2", "sampler.mode=round_robin"]
    overrides += ["train.ir_global_batch=10", "train.sts_global_batch=10"]
    cfg = load_config("smoke", overrides)
    assert demo_floor.mode_usage(cfg, "joint") == (10, {"ir": 2.0, "sts": 1.6})
    capped = load_config("smoke", [*overrides, "train.max_steps=4"])
    assert demo_floor.mode_usage(capped, "joint") == (4, {"ir": 20 / 30, "sts": 0.8})
    assert demo_floor.mode_usage(cfg, "sts_only") == (4, {"sts": 1.6})
    assert demo_floor.mode_usage(cfg, "mixed") == (4, {"ir": 40 / 30, "sts": 1.6})


def test_training_texts_are_every_query_passage_and_sentence(tmp_path, monkeypatch):
    """Two IR rows (q1 with positives p1, p2 and negative n1; q2 with positive p3, no negatives) and
    three STS pairs: 2 queries + 4 passages and 6 sentences, each with its length and instruction."""
    ir, sts = tmp_path / "ir.parquet", tmp_path / "sts.parquet"
    pq.write_table(
        pa.table(
            {
                "query": ["q1", "q2"],
                "positives": [["p1", "p2"], ["p3"]],
                "negatives": [["n1"], None],
            }
        ),
        ir,
    )
    pq.write_table(
        pa.table({"sentence1": ["a1", "a2", "a3"], "sentence2": ["b1", "b2", "b3"]}), sts
    )
    monkeypatch.setattr(
        demo_floor, "training_shards", lambda cfg, tasks: {"ir": [str(ir)], "sts": [str(sts)]}
    )
    cfg = load_config("smoke", ["model.instruction_ir=find", "train.max_length_passage=48"])
    assert demo_floor.task_texts(cfg, "ir") == [
        ("q1", 32, "find"),
        ("q2", 32, "find"),
        ("p1", 48, ""),
        ("p2", 48, ""),
        ("p3", 48, ""),
        ("n1", 48, ""),
    ]
    assert demo_floor.task_texts(cfg, "sts") == [
        (s, 32, "") for s in ("a1", "a2", "a3", "b1", "b2", "b3")
    ]


def test_flops_of_hand_counted_sentences(tiny_model_path):
    """One layer, h = 4, i = 8: N = 1 · (4·4² + 2·4·8) = 128 weights per token in matrix products.
    "the cat" is [CLS] the cat [SEP] = 4 tokens; "the cat sat on the mat" is 8, cut to 5 at
    max_length 5. T = 4 + 8 + 5 = 17 tokens, Σ L² = 16 + 64 + 25 = 105.
    Training: 6 N T + 12 · layers · h · Σ L² = 6·128·17 + 12·1·4·105 = 13056 + 5040 = 18096;
    encoding (forward only) a third: 6032."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    shape = SimpleNamespace(num_hidden_layers=1, hidden_size=4, intermediate_size=8)
    texts = [
        ("the cat", 16, ""),
        ("the cat sat on the mat", 16, ""),
        ("the cat sat on the mat", 5, ""),
    ]
    assert demo_floor.flops(shape, tokenizer, texts, "train") == 18096
    assert demo_floor.flops(shape, tokenizer, texts, "encode") == pytest.approx(6032)


def test_floor_rows_from_round_numbers():
    """Peak 100 GFLOP/s. Training: 6 TFLOP of passages at 100 GFLOP/s (60 s) and 3 TFLOP of short
    texts at 50 GFLOP/s (60 s): 9 TFLOP, 1.5 min at peak, 2 min at the encoder's rates. Fuse: 1.2
    TFLOP of passages at 20 GFLOP/s (60 s): 0.2 min at peak, 1 min at rate; its short texts do no
    work, so their rate is never needed. All: 10.2 TFLOP, 1.7 min, 3 min."""
    work = {
        "train joint": {"train passages": 6e12, "train short texts": 3e12},
        "fuse": {"encode passages": 1.2e12, "encode short texts": 0.0},
    }
    rates = {"train passages": 1e11, "train short texts": 5e10, "encode passages": 2e10}
    rows = demo_floor.floor_rows(work, 1e11, rates)
    expected = {
        "train joint": (9.0, 1.5, 2.0),
        "fuse": (1.2, 0.2, 1.0),
        "all": (10.2, 1.7, 3.0),
    }
    for stage, (tflop, at_peak, at_rate) in expected.items():
        assert rows[stage] == pytest.approx(
            {"TFLOP": tflop, "min at peak": at_peak, "min at encoder rate": at_rate}
        )


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_root):
    """One ``--quick`` run (smoke preset: prepare, mine, count, measure) and its report."""
    root = tmp_path_factory.mktemp("floor")
    overrides = [f"run.root={root}", f"data.root={data_root}"]
    out = root / "floor.json"
    demo_floor.main(["--quick", *overrides, "--out", str(out)])
    return json.loads(out.read_text())


def test_quick_report_has_every_stage_and_kind(quick):
    """The smoke preset trains joint only (K = 1 candidate) and evaluates every fused model: 6 fuse
    scorings (delta p = 1, 2; soup; task arithmetic λ = 0.5, 1; ties; greedy soup has no trial
    with one candidate) and 1 + 1 + 5 models scored (base, joint, one per method). Joint's only
    encoding is its one dev evaluation at the end (eval_every 0), so the fuse stage, six dev
    scorings of the same dev texts, does exactly six times its encoding work."""
    assert quick["fuse_scorings"] == 6 and quick["models_scored"] == 7
    stages, work = quick["stages"], quick["work_flops"]
    assert set(stages) == {"train joint", "fuse", "evaluate", "all"}
    assert all(work["train joint"][kind] > 0 for kind in demo_floor.KINDS)
    for stage in ("fuse", "evaluate"):  # inference only
        assert work[stage]["train passages"] == work[stage]["train short texts"] == 0
        assert work[stage]["encode passages"] > 0 and work[stage]["encode short texts"] > 0
    for kind in ("encode passages", "encode short texts"):
        assert work["fuse"][kind] == pytest.approx(6 * work["train joint"][kind])
    assert set(quick["rates_gflops"]) == {"peak", *demo_floor.KINDS}


def test_dev_texts_include_the_extra_dev_sets_of_the_objective(monkeypatch):
    """One STS dev pair, one IR dev query over two documents, and an extra dev set of one query over
    one document: dev scoring encodes all seven texts, each with its task's length and instruction."""

    def ir(query, docs):
        return IrData(
            queries={"q": query},
            doc_ids=list(docs),
            doc_texts=list(docs),
            qrels={"q": {docs[0]: 1}},
        )

    dev = DevData(
        sts=StsData(sentence1=["s1"], sentence2=["s2"], gold=np.array([1.0])),
        ir=ir("q-dev", ["d1", "d2"]),
        extra={"dev:ood": ir("q-ood", ["d3"])},
    )
    monkeypatch.setattr(demo_floor, "dev_data", lambda cfg: dev)
    cfg = load_config("smoke", ["model.instruction_ir=find"])
    length = cfg.model.max_length_passage
    assert demo_floor.dev_texts(cfg) == [
        ("s1", 32, ""),
        ("s2", 32, ""),
        ("q-dev", 32, "find"),
        ("d1", length, ""),
        ("d2", length, ""),
        ("q-ood", 32, "find"),
        ("d3", length, ""),
    ]
