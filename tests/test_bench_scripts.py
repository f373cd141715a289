"""The pure pieces of the benchmarks in ``bench/``: FLOP count, token accounting, interleaved timing,
the report, both trainers on the same weights, and the GPU step's CPU fallback without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import _timing, gpu_step  # noqa: E402
from bench.encode_throughput import st_order  # noqa: E402
from pipeline.train.step import batch_size_and_tokens  # noqa: E402

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def test_flop_formula_matches_a_hand_count_and_torch_flop_counter():
    config = BertConfig(vocab_size=100, attn_implementation="sdpa", **TINY)
    # per layer 4 h^2 + 2 h i = 4*32*32 + 2*32*64 = 8192, two layers
    assert gpu_step.matmul_params(config) == 16384
    # 6 * 16384 * (5 + 9) + 12 * 2 * 32 * (25 + 81)
    assert gpu_step.train_flops(config, [5, 9]) == 1376256 + 81408
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False)
    counted = 0
    for length in (5, 9):  # one unpadded text at a time: every counted FLOP is on a real token
        ids = torch.randint(0, 100, (1, length))
        with FlopCounterMode(display=False) as counter:
            model(
                input_ids=ids, attention_mask=torch.ones_like(ids)
            ).last_hidden_state.sum().backward()
        counted += counter.get_total_flops()
    assert counted == gpu_step.train_flops(config, [5, 9])


def test_token_counts_separate_real_tokens_from_padding():
    masks = [torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([[1, 1, 1, 1]])]
    assert gpu_step.token_counts(masks) == (7, 10)
    assert gpu_step.real_lengths(masks) == [2, 1, 4]


def test_both_ir_layouts_hold_the_same_real_tokens():
    shape = gpu_step.QUICK_BATCHES["ir"]
    ours, theirs = gpu_step.ir_batches(np.random.default_rng(0), shape, vocab=30522)
    assert len(theirs) == 1 + shape.passages  # anchor, positive, negatives
    assert ours["positives"]["input_ids"].shape[:2] == (shape.rows, 1)
    assert ours["negatives"]["input_ids"].shape[:2] == (shape.rows, shape.passages - 1)
    real, _ = gpu_step.token_counts(gpu_step.our_masks("ir", ours))
    assert real == gpu_step.token_counts(f["attention_mask"] for f in theirs)[0]
    assert real == batch_size_and_tokens("ir", ours)[1]  # the project's own count
    # the first passage of every query is its positive in both layouts
    assert torch.equal(ours["positives"]["input_ids"][:, 0], theirs[1]["input_ids"])


def test_compare_warms_up_then_interleaves_the_systems():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    seconds = _timing.compare(steps, warmup=1, windows=3, per_window=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert {name: len(runs) for name, runs in seconds.items()} == {"a": 3, "b": 3}


def test_rates_are_medians_over_windows():
    row = _timing.rates([1.0, 4.0, 2.0], {"docs": 8, "tokens": 80})
    assert row == {"docs/s": 4.0, "tokens/s": 40.0, "seconds": 2.0}


def test_finish_prints_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "r" / "bench.json"
    _timing.finish({"ratio": 1.25, "results": {"x": {"docs/s": 3.0}}}, "| t |", str(out))
    assert json.loads(out.read_text()) == {"ratio": 1.25, "results": {"x": {"docs/s": 3.0}}}
    printed = capsys.readouterr().out
    assert "| t |" in printed and "1.250" in printed


def test_sentence_transformers_order_is_longest_text_first():
    assert st_order(["ab", "abcd", "a"], [5, 9, 2]) == [9, 5, 2]


def test_both_systems_start_from_the_same_weights_and_train(tmp_path):
    folder = gpu_step.write_random_model(TINY, tmp_path / "model")
    systems = gpu_step.Systems.load(folder, device=torch.device("cpu"), lr=1e-3, total_steps=10)
    ours, features = gpu_step.sts_batches(
        np.random.default_rng(0), gpu_step.QUICK_BATCHES["sts"], vocab=30522
    )
    systems.ours.eval()
    systems.theirs.eval()
    with torch.no_grad():
        mine = systems.ours(**ours["sentence1"])
        theirs = systems.theirs(dict(features[0]))["sentence_embedding"]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    weights = {
        gpu_step.OURS: systems.ours.backbone.embeddings.word_embeddings.weight,
        gpu_step.THEIRS: systems.theirs[0].model.embeddings.word_embeddings.weight,
    }
    before = {s: w.detach().clone() for s, w in weights.items()}
    for step in systems.steps("sts", [(ours, features, ours["score"])]).values():
        step()
    for system, weight in weights.items():
        assert not torch.equal(before[system], weight), f"{system} did not update"


def test_train_throughput_batches_give_both_systems_the_same_tokens(data_root, tiny_model_path):
    from sentence_transformers import SentenceTransformer

    from bench import train_throughput as tt
    from pipeline.config import load_config
    from pipeline.data.readers import read_source, source_path

    cfg = load_config(
        "demo", [f"data.root={data_root}", "model.max_length_passage=48", "mining.num_negatives=2"]
    )
    source = tt._source(cfg, "ir")
    records = read_source(source.model_copy(update={"limit": 6}), str(data_root)).table
    records = tt.random_negatives(records, source_path(source, str(data_root)), 2, seed=0)
    positives = records.column("positives").to_pylist()
    for negatives, texts in zip(records.column("negatives").to_pylist(), positives):
        assert len(negatives) == 2 and not set(negatives) & set(texts)
    st_model = SentenceTransformer(tiny_model_path, device="cpu")
    records = tt._replace(records, "positives", [p[:1] for p in positives])
    batches = [
        tt.ir_batch(cfg, table, tiny_model_path, st_model, pad_id=0)
        for table in tt.slices(records, 3, 2, seed=0)
    ]
    work = tt.checked_work("ir", batches)  # raises when the two tokenisations differ
    assert work["pairs"] == 3 and work["tokens"] > 0
    ours, features, _ = batches[0]
    features[1]["attention_mask"][0, 0] = 0
    with pytest.raises(RuntimeError, match="tokens"):
        tt.checked_work("ir", [(ours, features, None)])


def test_gpu_step_falls_back_to_cpu(tmp_path):
    out = tmp_path / "gpu_step.json"
    argv = ["--device", "cpu", "--quick", "--shapes", "minilm-l6", "--windows", "1"]
    gpu_step.main([*argv, "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["ratios"]) == {"minilm-l6 ir", "minilm-l6 sts"}
    for row in report["results"].values():
        assert row["real tokens/s"] > 0 and row["MFU %"] > 0 and 0 <= row["padding %"] < 100


# ---- ingest, scaling, fusion: the pure pieces (no Ray) ---------------------------------------------


def test_timed_reports_the_wait_for_each_item():
    from pipeline.data.batches import timed

    def slow():
        yield "a"
        time.sleep(0.05)
        yield "b"

    (wait_a, a), (wait_b, b) = timed(slow())
    assert (a, b) == ("a", "b")
    assert wait_a < 0.05 <= wait_b


def test_wait_fractions_and_consumption_from_a_hand_made_log():
    from bench.ingest import wait_fractions
    from bench.ray_runs import task_medians

    rows = [
        {"task": "ir", "step_seconds": 9.0, "data_wait_s": 1.0, "pairs_per_s": 1.0},  # 1/10
        {"task": "sts", "step_seconds": 1.0, "data_wait_s": 0.0, "pairs_per_s": 16.0},  # 0
        {"task": "sts", "step_seconds": 3.0, "data_wait_s": 1.0, "pairs_per_s": 4.0},  # 1/4
        {"task": "sts", "step_seconds": 2.0, "data_wait_s": 0.0, "pairs_per_s": 8.0},  # 0
        {"task": "ir", "step_seconds": 5.0, "pairs_per_s": 3.0},  # older log: no data_wait_s
        {"step": 7, "dev_mean": 0.5},  # not a step of one task
    ]
    waits = wait_fractions(rows)
    assert waits["ir"] == {"steps": 1, "median": pytest.approx(0.1), "total": pytest.approx(0.1)}
    assert waits["sts"] == {"steps": 3, "median": 0.0, "total": pytest.approx(1 / 7)}
    # all four: fractions 0.1, 0, 0.25, 0 -> median 0.05; waits 2 s of 17 s
    assert waits["all"] == {
        "steps": 4,
        "median": pytest.approx(0.05),
        "total": pytest.approx(2 / 17),
    }
    assert task_medians(rows, "pairs_per_s") == {"ir": 2.0, "sts": 8.0}
    assert wait_fractions([{"task": "ir", "step_seconds": 1.0}]) == {}


def test_gather_traffic_matches_a_hand_count():
    from bench import scaling

    # 3 workers, each 2 queries x 4 passages x dim 8 in float32: one chunk = 2*4*8*4 = 256 bytes.
    # Forward ring all-gather: each worker passes on 2 chunks (512 B); backward reduce-scatter of
    # the gathered gradient: 2 more (512 B). 1024 bytes sent (and as many received) per step.
    assert scaling.gather_traffic(3, queries=2, passages=4, dim=8, nbytes=4) == 1024
    assert scaling.gather_traffic(1, queries=2, passages=4, dim=8, nbytes=4) == 0
    # BERT-base, 8 workers, 16 queries x 8 passages, fp32: 2 * 7 * 16 * 8 * 768 * 4
    assert scaling.gather_traffic(8, 16, 8, 768, 4) == 5_505_024
    assert scaling.link_seconds(1.25e9, 10) == pytest.approx(1.0)  # 10 Gb/s = 1.25 GB/s
    report = scaling.estimate()
    json.dumps(report, sort_keys=True)  # as the report is written
    rows = report["rows"]
    assert rows["64 workers bf16"]["MB sent"] == pytest.approx(2 * 63 * 16 * 8 * 768 * 2 / 1e6)
    assert rows["8 workers fp32"]["ms @100Gb/s"] == pytest.approx(5_505_024 * 8 / 1e8)
    # DDP's ring all-reduce: 2 (W-1)/W of the gradients; 4 workers x 1000 fp32 values -> 6000 B
    assert scaling.allreduce_traffic(1000, 4, 4) == 6000
    assert report["params"] == 108_891_648  # bert-base-uncased without its pooler


def test_fusion_ratio_on_fake_rows():
    from bench import fusion

    runs = [
        {
            "rss_before_mib": 300.0,
            "peak_mib": p,
            "fusion_mib": p - 300,
            "seconds": s,
            "peak_reset": True,
        }
        for p, s in ((310.0, 1.0), (330.0, 3.0), (320.0, 2.0))
    ]
    row = fusion.median_row(runs)
    assert (row["peak_mib"], row["fusion_mib"], row["seconds"]) == (320.0, 20.0, 2.0)
    rows = [
        {"method": "delta", "k": 8, "peak_mib": 330.0, "fusion_mib": 30.0},
        {"method": "delta", "k": 2, "peak_mib": 300.0, "fusion_mib": 10.0},
        {"method": "delta", "k": 4, "peak_mib": 310.0, "fusion_mib": 20.0},
        {"method": "soup", "k": 8, "peak_mib": 900.0, "fusion_mib": 600.0},
    ]
    assert fusion.peak_ratio(rows) == pytest.approx(1.1)
    assert fusion.peak_ratio(rows, key="fusion_mib") == pytest.approx(3.0)
    with pytest.raises(ValueError, match="ties"):
        fusion.peak_ratio(rows, method="ties")


def test_new_bench_scripts_import_without_ray():
    code = (
        "import sys; import bench.ingest, bench.scaling, bench.fusion; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "script",
    [
        "encode_sorting",
        "encode_throughput",
        "fusion",
        "gpu_step",
        "ingest",
        "scaling",
        "source_batches",
        "train_throughput",
    ],
)
def test_every_bench_script_builds_its_command_line(script, capsys):
    """``--help`` parses: an option defined twice (argparse conflict) fails here, not in a long run."""
    import importlib

    module = importlib.import_module(f"bench.{script}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_source_batches_counts_the_padding_that_mixing_sources_adds():
    """Two sources of equal-length records: one source per batch pads nothing beyond each source's
    own length, so its tokens are the sources' own; mixing pads short records to long ones."""
    import pyarrow as pa

    from bench import source_batches
    from pipeline.data.ray_datasets import tokenize_ir
    from pipeline.data.records import IR_SCHEMA
    from pipeline.model.loading import packaged_model_path

    def source(name: str, passage: str) -> pa.Table:
        records = [
            {"id": f"{name}{i}", "query": "q", "positives": [passage], "negatives": [passage]}
            | {"positive_ids": [], "source": name}
            for i in range(4)
        ]
        table = pa.Table.from_pylist(records, schema=IR_SCHEMA)
        return tokenize_ir(
            table, tokenizer_path=packaged_model_path(), max_length_query=8, max_length_passage=32
        )

    sources = {"short": source("short", "a b"), "long": source("long", "word " * 20)}
    own = sum(source_batches.epoch_tokens({n: t}, False, 0, 2, 1)[0] for n, t in sources.items())
    runs = [
        source_batches.epoch_tokens(sources, by_source, seed, 2, 1)
        for by_source in (True, False)
        for seed in range(4)
    ]
    assert all(tokens == own and steps == 4 for tokens, steps in runs[:4])
    assert all(tokens >= own and steps == 4 for tokens, steps in runs[4:])
    assert max(tokens for tokens, _ in runs[4:]) > own  # some shuffle puts both in one batch
