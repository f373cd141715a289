"""Hard-negative mining and the IR dev slice, on the real SciFact data (BM25 over the whole corpus)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.beir import load_qrels, load_split
from pipeline.data.mining import cap_given, dev_slice, mine_negatives, split_dev_queries
from pipeline.data.mining_retrieval import (
    BM25Retriever,
    DenseRetriever,
    FusedRetriever,
    top_k,
)
from pipeline.data.records import IR_SCHEMA

WINDOW = (5, 20)
SEED = 49


@pytest.fixture(scope="module")
def scifact(data_root):
    return load_split(str(data_root / "scifact-beir"), "train")


@pytest.fixture(scope="module")
def corpus(scifact):
    ids = sorted(scifact.corpus)
    return ids, [scifact.document_text(doc) for doc in ids]


@pytest.fixture(scope="module")
def bm25(corpus):
    return BM25Retriever(corpus[1])


def ir_table(split, query_ids, negatives=None) -> pa.Table:
    """IR records of SciFact queries, positives from the qrels (as the BEIR reader writes them)."""
    rows = [
        {
            "id": qid,
            "query": split.queries[qid],
            "positives": [split.document_text(doc) for doc in split.qrels[qid]],
            "negatives": (negatives or {}).get(qid, []),
            "positive_ids": list(split.qrels[qid]),
            "source": "scifact",
        }
        for qid in query_ids
    ]
    return pa.Table.from_pylist(rows, schema=IR_SCHEMA)


@pytest.fixture(scope="module")
def sample_ids(scifact):
    return sorted(scifact.queries, key=int)[:150]


@pytest.fixture(scope="module")
def mined(scifact, corpus, bm25, sample_ids):
    table, stats = mine_negatives(
        ir_table(scifact, sample_ids),
        *corpus,
        retriever=bm25,
        num_negatives=4,
        rank_window=WINDOW,
        seed=SEED,
        qrels=scifact.qrels,
    )
    return table, stats


def by_id(table: pa.Table) -> dict[str, list[str]]:
    return dict(zip(table.column("id").to_pylist(), table.column("negatives").to_pylist()))


def test_mining_never_returns_a_positive(scifact, corpus, mined):
    table, stats = mined
    ids_of_text: dict[str, set[str]] = {}
    for doc, text in zip(*corpus):
        ids_of_text.setdefault(text, set()).add(doc)
    mined_count = 0
    for qid, negatives in by_id(table).items():
        assert negatives, qid
        for text in negatives:
            assert not ids_of_text[text] & set(scifact.qrels[qid]), (qid, text[:60])
            mined_count += 1
    assert stats.mined == table.num_rows and stats.mined_negatives == mined_count
    assert stats.qrels_positive_negatives == 0 and stats.qrels_positive_fraction == 0.0
    assert stats.positives_in_window >= 0 and sum(stats.negatives_histogram.values()) == stats.mined


def test_mined_negatives_lie_in_the_rank_window(corpus, bm25, mined):
    table, _ = mined
    lo, hi = WINDOW
    queries = table.column("query").to_pylist()
    rankings = bm25.search(queries, 100)
    for ranking, negatives in zip(rankings, table.column("negatives").to_pylist()):
        rank_of = {
            corpus[1][doc].strip(): rank for rank, doc in enumerate(ranking.tolist(), start=1)
        }
        ranks = [rank_of[text] for text in negatives]
        assert all(lo <= rank <= hi for rank in ranks), ranks
        assert ranks == sorted(ranks)  # hardest first


def test_mining_is_deterministic_and_independent_of_order(scifact, corpus, bm25, sample_ids, mined):
    reference = by_id(mined[0])
    shuffled = list(sample_ids)
    random.Random(0).shuffle(shuffled)
    halves = [shuffled[: len(shuffled) // 3], shuffled[len(shuffled) // 3 :]]
    again: dict[str, list[str]] = {}
    for part in halves:
        table, _ = mine_negatives(
            ir_table(scifact, part),
            *corpus,
            retriever=bm25,
            num_negatives=4,
            rank_window=WINDOW,
            seed=SEED,
        )
        again.update(by_id(table))
    assert again == reference
    other, _ = mine_negatives(
        ir_table(scifact, sample_ids),
        *corpus,
        retriever=bm25,
        num_negatives=4,
        rank_window=WINDOW,
        seed=SEED + 1,
    )
    assert by_id(other) != reference


def test_records_with_negatives_pass_through_and_short_windows_are_counted(
    scifact, corpus, bm25, sample_ids
):
    given = {sample_ids[0]: ["a given negative"]}
    table, stats = mine_negatives(
        ir_table(scifact, sample_ids[:20], negatives=given),
        *corpus,
        retriever=bm25,
        num_negatives=5,
        rank_window=(1, 3),
        seed=SEED,
    )
    assert by_id(table)[sample_ids[0]] == ["a given negative"]
    assert stats.passed_through == 1 and stats.mined == 19
    lengths = [len(negs) for negs in table.column("negatives").to_pylist()[1:]]
    assert max(lengths) <= 3
    assert stats.short == 19 and stats.mined_negatives == sum(lengths)
    assert stats.negatives_histogram == {n: lengths.count(n) for n in set(lengths)}
    assert table.schema == IR_SCHEMA


class FixedRetriever:
    def __init__(self, ranking: list[int]) -> None:
        self.ranking = np.array(ranking)

    def search(self, queries, k):
        return [self.ranking[:k] for _ in queries]


class TableEncoder:
    """A fake encoder: each text's unit vector is given; the query is e0, so cos = first coordinate."""

    def __init__(self, cosines: dict[str, float]) -> None:
        self.cosines = cosines

    def encode(self, texts, *, max_length, instruction="", batch_size=64, sort_by_length=True):
        out = []
        for text in texts:
            c = 1.0 if text == "query" else self.cosines[text]
            out.append([c, np.sqrt(1.0 - c * c)])
        return np.asarray(out, dtype=np.float32)


def test_margin_filter_drops_candidates_near_the_weakest_positive():
    cosines = {"pos a": 0.9, "pos b": 0.8, "d0": 0.95, "d1": 0.75, "d2": 0.69, "d3": 0.2}
    records = pa.Table.from_pylist(
        [
            {
                "id": "q",
                "query": "query",
                "positives": ["pos a", "pos b"],
                "negatives": [],
                "positive_ids": [],
                "source": "toy",
            }
        ],
        schema=IR_SCHEMA,
    )
    docs = ["d0", "d1", "d2", "d3"]
    table, stats = mine_negatives(
        records,
        docs,
        docs,
        retriever=FixedRetriever([0, 1, 2, 3]),
        num_negatives=10,
        rank_window=(1, 4),
        margin=0.1,  # threshold = min(0.9, 0.8) - 0.1 = 0.7
        seed=SEED,
        encoder=TableEncoder(cosines),
    )
    assert table.column("negatives").to_pylist() == [["d2", "d3"]]
    assert stats.margin_dropped == 2 and stats.short == 1
    with pytest.raises(ValueError, match="encoder"):
        mine_negatives(
            records, docs, docs, retriever=FixedRetriever([0]), num_negatives=1,
            rank_window=(1, 1), margin=0.1, seed=SEED,
        )  # fmt: skip


def test_top_k_breaks_ties_by_index_and_dense_chunks_match_brute_force():
    assert top_k(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 2).tolist() == [1, 2]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(37, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    texts = [f"t{i}" for i in range(37)]
    row_of = {text: i for i, text in enumerate(texts)}

    class MatrixEncoder:
        def encode(self, texts, *, max_length, instruction="", batch_size=64, sort_by_length=True):
            return emb[[row_of[t] for t in texts]]

    dense = DenseRetriever(
        MatrixEncoder(), texts[5:], max_length_query=8, max_length_passage=8,
        corpus_chunk=7, query_block=2,
    )  # fmt: skip
    got = dense.search(texts[:5], 6)
    brute = np.argsort(-(emb[:5] @ emb[5:].T), axis=1, kind="stable")[:, :6]
    assert [g.tolist() for g in got] == brute.tolist()


def test_reciprocal_rank_fusion():
    fused = FusedRetriever([FixedRetriever([0, 1, 2]), FixedRetriever([2, 3, 0])])
    # 0: 1/61 + 1/63, 2: 1/63 + 1/61 (tie -> lower index), 1: 1/62, 3: 1/62
    assert fused.search(["q"], 3)[0].tolist() == [0, 2, 1]


def test_dev_slice_is_fixed_disjoint_and_never_test(data_root, scifact):
    ids = sorted(scifact.queries, key=int)
    table = ir_table(scifact, ids)
    train, dev = split_dev_queries(table, 100, SEED)
    dev_ids = set(dev.column("id").to_pylist())
    assert len(dev_ids) == 100 and train.num_rows == len(ids) - 100
    assert dev_ids.isdisjoint(train.column("id").to_pylist())
    reordered = ir_table(scifact, list(reversed(ids)))
    assert set(split_dev_queries(reordered, 100, SEED)[1].column("id").to_pylist()) == dev_ids
    assert set(split_dev_queries(table, 100, SEED + 1)[1].column("id").to_pylist()) != dev_ids
    test_ids = set(load_qrels(str(data_root / "scifact-beir"), "test"))
    assert dev_ids.isdisjoint(test_ids)
    doc = dev_slice(dev, source="scifact", source_path="/data/scifact", qrels=scifact.qrels)
    assert set(doc["queries"]) == dev_ids and doc["qrels"] == {q: scifact.qrels[q] for q in dev_ids}
    with pytest.raises(ValueError, match="dev_queries"):
        split_dev_queries(table, len(ids), SEED)


def test_dense_and_fused_mining_with_the_tiny_model_apply_the_margin(scifact, tiny_model_path):
    from pipeline.data.mining_retrieval import build_retriever
    from pipeline.model.encoder import Encoder

    encoder = Encoder.from_pretrained(tiny_model_path, pooling="mean", normalize=True)
    query_ids = sorted(scifact.queries, key=int)[:8]
    doc_ids = sorted(
        {d for q in query_ids for d in scifact.qrels[q]} | set(sorted(scifact.corpus)[:120])
    )
    texts = [scifact.document_text(d) for d in doc_ids]
    lengths = {"max_length_query": 32, "max_length_passage": 64}
    retriever = build_retriever("both", texts, encoder=encoder, **lengths)
    records = ir_table(scifact, query_ids)
    margin, window = 0.01, (1, 20)
    table, stats = mine_negatives(
        records, doc_ids, texts, retriever=retriever, num_negatives=3, rank_window=window,
        margin=margin, seed=SEED, encoder=encoder, qrels=scifact.qrels, **lengths,
    )  # fmt: skip
    assert stats.qrels_positive_fraction == 0.0
    queries = records.column("query").to_pylist()
    q_emb = encoder.encode(queries, max_length=32)
    dropped = 0
    for row, (ranking, negatives) in enumerate(
        zip(retriever.search(queries, window[1]), by_id(table).values())
    ):
        positives = set(scifact.qrels[query_ids[row]])
        pos_emb = encoder.encode([scifact.document_text(d) for d in positives], max_length=64)
        threshold = float((pos_emb @ q_emb[row]).min()) - margin
        window_docs = [doc for doc in ranking.tolist() if doc_ids[doc] not in positives]
        cand_emb = encoder.encode([texts[doc] for doc in window_docs], max_length=64)
        allowed = {
            texts[doc].strip()
            for doc, e in zip(window_docs, cand_emb)
            if e @ q_emb[row] <= threshold
        }
        dropped += len(window_docs) - len(allowed)
        assert set(negatives) <= allowed and len(negatives) == min(3, len(allowed))
    assert stats.margin_dropped == dropped


def test_mine_job_writes_records_dev_slice_and_skips_when_unchanged(tmp_path, capsys):
    from jobs import mine, prepare
    from pipeline import storage
    from pipeline.config import load_config

    cfg = load_config("smoke", [f"run.root={tmp_path}"])
    manifest = prepare.main(cfg)
    stats = mine.main(cfg)
    prepared = storage.read_parquet(manifest["sources"]["scifact"]["shard"])
    mined = storage.read_parquet(stats["sources"]["scifact"]["output"])
    dev = storage.read_json(str(tmp_path / "smoke" / "mined" / "ir_dev.json"))
    assert set(dev) == {"source", "source_path", "queries", "qrels"} and dev["source"] == "scifact"
    assert storage.exists(storage.join(dev["source_path"], "corpus.jsonl"))
    mined_ids = set(mined.column("id").to_pylist())
    assert len(dev["queries"]) == cfg.mining.dev_queries and mined_ids.isdisjoint(dev["queries"])
    assert mined_ids | set(dev["queries"]) == set(prepared.column("id").to_pylist())
    assert all(len(n) == cfg.mining.num_negatives for n in mined.column("negatives").to_pylist())
    assert stats["sources"]["scifact"]["qrels_positive_fraction"] == 0.0
    capsys.readouterr()
    done = tmp_path / "smoke" / "mined" / "done.json"
    key = storage.read_json(str(done))["input_hash"]
    assert mine.main(cfg) == stats
    assert "inputs unchanged" in capsys.readouterr().out
    mine.main(load_config("smoke", [f"run.root={tmp_path}", "mining.num_negatives=2"]))
    assert "inputs unchanged" not in capsys.readouterr().out
    assert storage.read_json(str(done))["input_hash"] != key


def test_shipped_positives_and_negatives_are_capped_to_a_seeded_sample_in_order():
    rows = [
        {
            "id": f"q{i}",
            "query": f"question {i}",
            "positives": [f"answer {i}.{k}" for k in range(n_pos)],
            "negatives": [f"wrong {i}.{k}" for k in range(n_neg)],
            "positive_ids": [f"d{i}.{k}" for k in range(n_pos)],
            "source": "trecqa",
        }
        for i, (n_pos, n_neg) in enumerate([(40, 3), (2, 45), (1, 1)])
    ]
    table = pa.Table.from_pylist(rows, schema=IR_SCHEMA)
    capped, cut = cap_given(table, max_positives=5, max_negatives=2, seed=SEED)
    assert cut == {"positives": 1, "negatives": 2} and capped.schema == IR_SCHEMA
    out = capped.to_pylist()
    assert [len(r["positives"]) for r in out] == [5, 2, 1]
    assert [len(r["negatives"]) for r in out] == [2, 2, 1]
    assert out[2] == rows[2]  # under both caps: unchanged
    for before, after in zip(rows, out):
        for column in ("positives", "negatives"):
            kept = [before[column].index(text) for text in after[column]]
            assert kept == sorted(kept)  # a subset, in the record's own order
        ids = [before["positive_ids"][before["positives"].index(t)] for t in after["positives"]]
        assert after["positive_ids"] == ids  # ids follow their positives
    again, _ = cap_given(table.slice(1), max_positives=5, max_negatives=2, seed=SEED)
    assert again.to_pylist() == out[1:]  # seeded per record id, not by position
    other, _ = cap_given(table, max_positives=5, max_negatives=2, seed=SEED + 1)
    assert other.to_pylist()[0]["positives"] != out[0]["positives"]
    unlimited, cut = cap_given(table, max_positives=None, max_negatives=45, seed=SEED)
    assert unlimited.to_pylist() == rows and cut == {"positives": 0, "negatives": 0}
