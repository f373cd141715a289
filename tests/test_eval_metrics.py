"""Evaluation metrics against hand-computed values, chunked top-k against brute force, and the
``jobs.evaluate`` entry point on the smoke preset with the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.eval.geometry import (
    alignment,
    average_cosine,
    geometry_metrics,
    spectrum_metrics,
    uniformity,
)
from pipeline.eval.ir import build_run, exact_topk, ir_metrics, per_query_ir_metrics
from pipeline.eval.sts import sts_scores
from pipeline.eval.table import eval_markdown, markdown_table


def _pairs_with_cosines(cosines):
    """Unit-vector pairs (a_i, b_i) whose cosine is exactly cosines[i]."""
    c = np.asarray(cosines, dtype=np.float64)
    a = np.tile([1.0, 0.0], (len(c), 1))
    b = np.stack([c, np.sqrt(1 - c**2)], axis=1)
    return a, b


def test_sts_spearman_with_tied_gold_and_pearson():
    a, b = _pairs_with_cosines([0.1, 0.2, 0.3, 0.4])
    gold = [1.0, 2.0, 2.0, 3.0]  # ranks 1, 2.5, 2.5, 4 (ties averaged)
    scores = sts_scores(a, b, gold)
    # rank deviations x = (-1.5, -.5, .5, 1.5), y = (-1.5, 0, 0, 1.5): r = 4.5 / sqrt(5 * 4.5)
    assert scores["spearman"] == pytest.approx(100 * 4.5 / math.sqrt(22.5), abs=1e-9)
    # cos deviations (-.15, -.05, .05, .15), gold deviations (-1, 0, 0, 1): r = .3 / sqrt(.05 * 2)
    assert scores["pearson"] == pytest.approx(100 * 0.3 / math.sqrt(0.1), abs=1e-9)
    a2, b2 = _pairs_with_cosines([0.4, 0.3, 0.2, 0.1])
    assert sts_scores(a2, b2, gold)["spearman"] == pytest.approx(-scores["spearman"])


QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 1},  # graded; d3 never retrieved
    "q2": {"d9": 1},  # nothing relevant retrieved
}
RUN = {
    "q1": {"d4": 0.9, "d1": 0.8, "d2": 0.7},
    "q2": {"d1": 0.5, "d2": 0.4},
}


def test_ir_metrics_hand_computed_graded_and_missed_query():
    got = ir_metrics(QRELS, RUN)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)  # d1 (gain 2) at rank 2, d2 (gain 1) at rank 3
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@10"] == pytest.approx(100 * (dcg / idcg + 0) / 2, abs=1e-6)
    assert got["recall@100"] == pytest.approx(100 * (2 / 3 + 0) / 2, abs=1e-6)
    assert got["mrr@10"] == pytest.approx(100 * (1 / 2 + 0) / 2, abs=1e-6)
    assert got["map"] == pytest.approx(100 * ((1 / 2 + 2 / 3) / 3 + 0) / 2, abs=1e-6)


def test_per_query_metrics_are_hand_computed_and_average_to_ir_metrics():
    per_query = per_query_ir_metrics(QRELS, RUN)
    assert set(per_query) == {"q1", "q2"}
    assert per_query["q1"]["mrr@10"] == pytest.approx(50.0) and per_query["q2"]["mrr@10"] == 0.0
    assert per_query["q1"]["map"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 3)
    means = ir_metrics(QRELS, RUN)
    for name, value in means.items():
        assert value == pytest.approx(np.mean([q[name] for q in per_query.values()]))


def test_query_missing_from_run_counts_zero():
    got = ir_metrics(QRELS, {"q1": RUN["q1"]})
    assert got["mrr@10"] == pytest.approx(100 * 0.5 / 2, abs=1e-6)


def test_mrr_is_cut_at_ten_but_recall_at_hundred_is_not():
    run = {"q": {f"n{i:02d}": 1.0 - i / 100 for i in range(10)} | {"rel": 0.5}}  # rel at rank 11
    got = ir_metrics({"q": {"rel": 1}}, run)
    assert got["mrr@10"] == 0.0 and got["ndcg@10"] == 0.0
    assert got["recall@100"] == 100.0
    assert got["map"] == pytest.approx(100 / 11, abs=1e-6)


def test_build_run_drops_self_hits_and_keeps_k():
    scores = np.array([[0.9, 0.8, 0.7]])
    rows = np.array([[1, 0, 2]])
    run = build_run(["b"], ["a", "b", "c"], scores, rows, k=2)
    assert run == {"b": {"a": pytest.approx(0.8), "c": pytest.approx(0.7)}}


@pytest.mark.parametrize(("k", "chunk"), [(10, 1), (10, 7), (10, 128), (25, 1000), (10, 5000)])
def test_chunked_topk_equals_brute_force(k, chunk):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(31, 16)).astype(np.float32)
    docs = rng.normal(size=(1037, 16)).astype(np.float32)
    scores, rows = exact_topk(queries, docs, k, chunk=chunk)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    full = q @ d.T
    want_rows = np.argsort(-full, axis=1)[:, :k]
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want_rows, 1), atol=1e-5)


def test_topk_larger_than_corpus_returns_everything():
    docs = np.eye(3, dtype=np.float32)
    scores, rows = exact_topk(np.array([[1.0, 0.5, 0.0]], dtype=np.float32), docs, k=10, chunk=2)
    assert rows.tolist() == [[0, 1, 2]] and scores.shape == (1, 3)


def test_geometry_hand_computed_values():
    x = np.eye(4)  # orthonormal: every pair at squared distance 2, cosine 0
    assert alignment(x, x) == 0.0
    assert alignment(x[:2], x[2:]) == pytest.approx(2.0)
    assert uniformity(x) == pytest.approx(-4.0)  # log exp(-2 * 2)
    assert average_cosine(x) == pytest.approx(0.0)
    spec = spectrum_metrics(x)
    assert spec["effective_rank"] == pytest.approx(4.0)
    assert spec["svd_entropy"] == pytest.approx(math.log(4))
    assert spec["condition_number"] == pytest.approx(1.0)
    collapsed = np.tile([[0.6, 0.8]], (5, 1))
    assert average_cosine(collapsed) == pytest.approx(1.0)
    assert uniformity(collapsed) == pytest.approx(0.0)
    dead_dim = spectrum_metrics(np.diag([3.0, 1.0, 0.0]))  # a dimension that is always 0
    assert dead_dim["numerical_rank"] == 2 and dead_dim["condition_number"] == pytest.approx(3.0)


def test_geometry_pairwise_matches_brute_force_and_samples():
    x = np.random.default_rng(1).normal(size=(300, 8))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(u), k=1)
    cos = (u[i] * u[j]).sum(1)
    assert average_cosine(x) == pytest.approx(cos.mean())
    assert uniformity(x) == pytest.approx(np.log(np.exp(-2 * (2 - 2 * cos)).mean()))
    metrics = geometry_metrics(x, positives=(x[:10], x[10:20]), max_points=100)
    assert set(metrics) == {
        "alignment",
        "uniformity",
        "avg_cosine",
        "svd_entropy",
        "effective_rank",
        "numerical_rank",
        "condition_number",
    }


def test_markdown_tables():
    table = markdown_table({"a": {"x": 1.234}, "b": {"y": 2.0}}, ["x", "y"])
    assert table.splitlines() == [
        "| benchmark | x | y |",
        "|---|---:|---:|",
        "| a | 1.23 |  |",
        "| b |  | 2.00 |",
    ]
    text = eval_markdown({"sts": {"spearman": 82.0, "uniformity": -2.5}})
    assert "| sts | 82.00 |" in text and "| sts | -2.500 |" in text


def test_evaluate_job_on_smoke_preset(tmp_path, data_root):
    from jobs.evaluate import main
    from pipeline.config import load_config
    from pipeline.data.beir import load_qrels, load_queries

    run_dir = tmp_path / "smoke"
    (run_dir / "mined").mkdir(parents=True)
    folder = str(data_root / "scifact-beir")
    qrels = dict(list(load_qrels(folder, "train").items())[:3])
    queries = load_queries(folder)
    dev = {
        "source_path": folder,
        "queries": {qid: queries[qid] for qid in qrels},
        "qrels": qrels,
    }
    (run_dir / "mined" / "ir_dev.json").write_text(json.dumps(dev))
    cfg = load_config(
        "smoke",
        [
            f"run.root={tmp_path}",
            f"data.root={data_root}",
            "eval.corpus_chunk=2000",
            "model.max_length_passage=32",
        ],
    )
    cfg.eval.benchmarks[0].limit = 50
    results = main(cfg)
    # the smoke preset scores one held-out benchmark (TREC-QA dev) beside the two dev sets and the
    # objective's out-of-domain dev set (TREC-QA train)
    assert set(results) == {"stsb-dev", "ir-dev", "trecqa-train", "trecqa-dev"}
    assert {"spearman", "pearson", "uniformity"} <= set(results["stsb-dev"])
    for name in ("ir-dev", "trecqa-dev"):
        assert {"ndcg@10", "recall@100", "mrr@10", "map", "alignment"} <= set(results[name])
    saved = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert {name: pytest.approx(values) for name, values in results.items()} == saved
    assert "| ir-dev |" in (run_dir / "eval" / "eval.md").read_text()


def test_benchmark_loading_limits_and_missing_dev_slice(tmp_path, data_root, capsys):
    from pipeline.config import EvalBenchmark
    from pipeline.eval.benchmarks import load_ir, load_sts, run_benchmarks

    beir = EvalBenchmark(name="sf", kind="ir", format="beir", path="scifact-beir", limit=5)
    data = load_ir(beir, str(data_root), str(tmp_path))
    assert len(data.queries) == len(data.qrels) == 5 and len(data.doc_ids) == 5183
    sts = EvalBenchmark(
        name="b", kind="sts", format="stsb", path="stsbenchmark/sts-test.csv", limit=7
    )
    pairs = load_sts(sts, str(data_root))
    assert len(pairs.sentence1) == 7 and pairs.gold.min() >= 0 and pairs.gold.max() <= 1

    dev = EvalBenchmark(name="ir-dev", kind="ir", format="ir_dev")
    assert run_benchmarks(None, [dev], data_root=str(data_root), run_dir=str(tmp_path)) == {}
    assert "ir-dev: skipped" in capsys.readouterr().out
    wrong = EvalBenchmark(name="x", kind="sts", format="beir", path="scifact-beir")
    with pytest.raises(ValueError, match="cannot be kind 'sts'"):
        run_benchmarks(None, [wrong], data_root=str(data_root), run_dir=str(tmp_path))


def test_bm25_pool_keeps_relevant_and_top_documents(data_root):
    from pipeline.config import EvalBenchmark
    from pipeline.data.mining_retrieval import BM25Retriever
    from pipeline.eval.benchmarks import bm25_pool, load_ir

    bench = EvalBenchmark(
        name="scifact-test", kind="ir", format="beir", path="scifact-beir", split="test", limit=20
    )
    full = load_ir(bench, str(data_root), "unused")
    pooled = bm25_pool(full, 5)
    kept = set(pooled.doc_ids)
    assert len(kept) < len(full.doc_ids)
    assert all(d in kept for rel in full.qrels.values() for d in rel)  # every relevant document
    hits = BM25Retriever(full.doc_texts).search(list(full.queries.values()), 5)
    assert {full.doc_ids[int(r)] for rows in hits for r in rows} <= kept
    # texts stay aligned with their ids
    position = {d: i for i, d in enumerate(full.doc_ids)}
    assert all(
        pooled.doc_texts[i] == full.doc_texts[position[d]] for i, d in enumerate(pooled.doc_ids)
    )


def test_held_out_trecqa_and_snli_loaders_on_the_real_files(data_root, capsys):
    """TREC-QA dev as retrieval over all its candidate sentences; SNLI test as pairs with gold 1 / 0.
    TREC-QA dev has 81 questions (SOURCE.txt); the 3 without a correct answer cannot be scored and
    are reported, not dropped silently."""
    import csv

    from pipeline.config import EvalBenchmark
    from pipeline.eval.benchmarks import load_ir, load_sts

    path = data_root / "trecqa-wang" / "dev.csv"
    trec = EvalBenchmark(name="trecqa-dev", kind="ir", format="trecqa", path=str(path))
    data = load_ir(trec, str(data_root), "unused")
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    answered = {r["qtext"] for r in rows if r["label"] == "1"}
    answers = {r["atext"] for r in rows if r["qtext"] in answered}
    assert len({r["qtext"] for r in rows}) == 81 and len(data.queries) == len(answered) == 78
    assert (
        "trecqa-dev: left out by design: {'questions_without_answer': 3}" in capsys.readouterr().out
    )
    assert sorted(data.doc_texts) == sorted(answers)  # every distinct candidate, once
    positives = {(r["qtext"], r["atext"]) for r in rows if r["label"] == "1"}
    by_text = dict(zip(data.doc_ids, data.doc_texts))
    got = {(data.queries[q], by_text[d]) for q, rel in data.qrels.items() for d in rel}
    assert got == positives

    snli = EvalBenchmark(
        name="snli-test", kind="sts", format="snli", path="snli-devtest-senteval", limit=50
    )
    pairs = load_sts(snli, str(data_root))
    premises = set(pairs.sentence1)
    assert len(premises) == 50 and set(pairs.gold) == {0.0, 1.0}
    for premise in list(premises)[:5]:  # each premise has an entailment and a contradiction
        labels = {g for s, g in zip(pairs.sentence1, pairs.gold) if s == premise}
        assert labels == {0.0, 1.0}


def test_held_out_benchmarks_score_a_model(tmp_path, data_root, tiny_model_path):
    from pipeline.config import EvalBenchmark
    from pipeline.eval.benchmarks import run_benchmarks
    from pipeline.model.encoder import Encoder

    benches = [
        EvalBenchmark(
            name="snli", kind="sts", format="snli", path="snli-devtest-senteval", limit=20
        ),
        EvalBenchmark(
            name="trec", kind="ir", format="trecqa", path="trecqa-wang/dev.csv", limit=10
        ),
    ]
    encoder = Encoder.from_pretrained(tiny_model_path, device="cpu")
    results = run_benchmarks(encoder, benches, data_root=str(data_root), run_dir=str(tmp_path))
    assert -100 <= results["snli"]["spearman"] <= 100
    assert 0 < results["trec"]["ndcg@10"] <= 100  # a random model still finds some answers


class CountingEncoder:
    """Encoder.encode with a log of the texts each call was given."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []
        self.dim = encoder.dim

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.encoder.encode(texts, **kwargs)


def test_embedding_memo_encodes_each_text_once_and_matches_the_encoder(tiny_model_path):
    from pipeline.eval.benchmarks import EmbeddingMemo
    from pipeline.model.encoder import Encoder

    encoder = Encoder.from_pretrained(tiny_model_path, device="cpu")
    counting = CountingEncoder(encoder)
    memo = EmbeddingMemo(counting, max_rows=3)
    first = ["a cat sat", "a dog ran far away", "a cat sat"]
    out = memo.encode(first, max_length=16, batch_size=2)
    np.testing.assert_allclose(out, encoder.encode(first, max_length=16), atol=1e-5)
    again = memo.encode(["a dog ran far away", "fish swim"], max_length=16)
    np.testing.assert_allclose(again[0], out[1], atol=0)
    # the other settings are another key; the memo is full at 3 rows, so new texts are not kept
    memo.encode(["a cat sat"], max_length=8)
    memo.encode(["birds fly", "birds fly"], max_length=16)
    memo.encode(["birds fly"], max_length=16)
    assert counting.calls == [
        ["a cat sat", "a dog ran far away"],
        ["fish swim"],
        ["a cat sat"],
        ["birds fly"],
        ["birds fly"],
    ]
    assert memo.encode([], max_length=16).shape == (0, encoder.dim)


def test_benchmarks_sharing_documents_encode_them_once(tmp_path, data_root, tiny_model_path):
    from pipeline.config import EvalBenchmark
    from pipeline.eval.benchmarks import run_benchmarks
    from pipeline.model.encoder import Encoder

    bench = dict(kind="ir", format="trecqa", path="trecqa-wang/dev.csv", limit=5)
    benches = [EvalBenchmark(name="first", **bench), EvalBenchmark(name="again", **bench)]
    counting = CountingEncoder(Encoder.from_pretrained(tiny_model_path, device="cpu"))
    results = run_benchmarks(counting, benches, data_root=str(data_root), run_dir=str(tmp_path))
    assert results["first"] == pytest.approx(results["again"])
    assert len(counting.calls) == 2  # queries and documents of the first; nothing new after
