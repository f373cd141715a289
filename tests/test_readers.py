"""Readers on the real files in ../shared/data (exact counts) and on small own-format / HF folders."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.config import SourceConfig
from pipeline.data.readers import read_source
from pipeline.data.records import IR_SCHEMA, STS_SCHEMA

STSB_ROWS = {"train": 5749, "dev": 1500, "test": 1379}


def _source(**fields) -> SourceConfig:
    return SourceConfig(**{"name": "src", **fields})


def _total(table: pa.Table, column: str) -> int:
    return pc.sum(pc.list_value_length(table[column])).as_py() or 0


@pytest.mark.parametrize("split", sorted(STSB_ROWS))
def test_stsb_both_formats_exact_counts_and_agree(data_root, split):
    tsv = read_source(
        _source(task="sts", format="stsb", path=f"stsbenchmark/sts-{split}.csv"), str(data_root)
    )
    csv = read_source(
        _source(task="sts", format="stsb_csv", path=f"stsb-multi-mt-en/stsb-en-{split}.csv"),
        str(data_root),
    )
    for result in (tsv, csv):
        assert (result.read, result.kept, result.quarantined) == (STSB_ROWS[split],) * 2 + ([],)
        assert result.table.schema == STS_SCHEMA
        scores = result.table["score"].to_numpy()
        assert scores.min() == 0.0 and scores.max() == 1.0
    for column in ("sentence1", "sentence2", "score"):
        assert tsv.table[column].equals(csv.table[column])
    assert tsv.table["id"][0].as_py().startswith("main-captions/MSRvid/2012test/")
    assert len(set(csv.table["id"].to_pylist())) == STSB_ROWS[split]


@pytest.mark.parametrize(
    ("split", "queries", "positives"), [("train", 809, 919), ("test", 300, 339)]
)
def test_scifact_queries_with_qrels_positives(data_root, split, queries, positives):
    result = read_source(
        _source(task="ir", format="beir", path="scifact-beir", split=split), str(data_root)
    )
    table = result.table
    assert (result.read, result.kept, result.quarantined) == (queries, queries, [])
    assert table.schema == IR_SCHEMA
    assert _total(table, "positives") == _total(table, "positive_ids") == positives
    assert _total(table, "negatives") == 0
    first = table.slice(0, 1).to_pylist()[0]
    assert first["id"] == ("0" if split == "train" else "1")
    assert first["positive_ids"] == ["31715818"]
    assert first["positives"][0].startswith(
        "New opportunities: the use of nanotechnologies"
    )  # "title text"


def test_trecqa_one_record_per_answered_question(data_root):
    result = read_source(
        _source(task="ir", format="trecqa", path="trecqa-wang/train.csv"), str(data_root)
    )
    assert (result.read, result.kept, result.quarantined) == (83, 83, [])
    assert result.skipped == {"questions_without_answer": 10}  # counted, not bad input
    assert _total(result.table, "positives") == 348  # every positive of the file
    assert _total(result.table, "negatives") == 4370 - 93  # less the unanswered questions' rows


def test_skip_and_limit_split_a_file_into_disjoint_slices(data_root):
    path, root = "trecqa-wang/train.csv", str(data_root)
    whole = read_source(_source(task="ir", format="trecqa", path=path), root).table
    head = read_source(_source(task="ir", format="trecqa", path=path, limit=57), root)
    tail = read_source(_source(task="ir", format="trecqa", path=path, skip=57), root)
    middle = read_source(_source(task="ir", format="trecqa", path=path, skip=50, limit=5), root)
    queries = whole.column("query").to_pylist()
    assert head.table.column("query").to_pylist() == queries[:57]
    assert tail.table.column("query").to_pylist() == queries[57:]
    assert middle.table.column("query").to_pylist() == queries[50:55]
    # each slice counts only the unanswered questions read with it: 5 + 5, the file's 10
    unanswered = [s.skipped.get("questions_without_answer", 0) for s in (head, tail)]
    assert unanswered == [5, 5]


def test_snli_dev_triplets(data_root):
    source = _source(task="ir", format="snli", path="snli-devtest-senteval", split="dev")
    result = read_source(source, str(data_root))
    assert (result.read, result.kept, result.quarantined) == (2943, 2943, [])
    assert result.skipped == {"neutral_pairs": 3235, "premises_without_triplet": 361}
    lengths = [pc.list_value_length(result.table[c]).to_numpy() for c in ("positives", "negatives")]
    assert all((n >= 1).all() for n in lengths)
    first = result.table.slice(0, 1).to_pylist()[0]
    assert first["query"] == "Two women are embracing while holding to go packages ."
    assert first["positives"] == ["Two woman are holding packages ."]
    assert first["negatives"] == ["The men are fighting outside a deli ."]


def test_limit_keeps_first_records(data_root):
    source = _source(task="sts", format="stsb", path="stsbenchmark/sts-train.csv", limit=10)
    result = read_source(source, str(data_root))
    assert result.read == result.kept == result.table.num_rows == 10


def test_own_jsonl_and_parquet_round_trip(tmp_path):
    ir = [{"query": "q1", "positives": ["p"], "negatives": ["n1", "n2"], "source": "ignored"}]
    (tmp_path / "ir.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ir))
    sts = pa.table({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1.0, 3.0]})
    pa.parquet.write_table(sts, tmp_path / "sts.parquet")

    ir_result = read_source(_source(task="ir", format="own", path="ir.jsonl"), str(tmp_path))
    assert ir_result.table.to_pylist() == [
        {**ir[0], "id": "ir.jsonl:1", "positive_ids": [], "source": "src"}
    ]
    source = _source(
        task="sts", format="own", path=str(tmp_path / "sts.parquet"), score_range=(1, 5)
    )
    sts_result = read_source(source, "/unused")
    assert sts_result.table["score"].to_pylist() == [0.0, 0.5]
    assert sts_result.table["id"].to_pylist() == ["sts.parquet:1", "sts.parquet:2"]


def test_own_folder_reads_every_file(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, score in (("b.jsonl", 2), ("a.jsonl", 4)):
        (folder / name).write_text(json.dumps({"sentence1": "x", "sentence2": "y", "score": score}))
    result = read_source(_source(task="sts", format="own", path="pairs"), str(tmp_path))
    assert result.table["id"].to_pylist() == ["a.jsonl:1", "b.jsonl:1"]
    assert [f.rsplit("/", 1)[-1] for f in result.input_files] == ["a.jsonl", "b.jsonl"]


def test_hf_local_folder_with_column_mapping(tmp_path):
    folder = tmp_path / "hub_like"
    folder.mkdir()
    rows = [
        {"anchor": "what is x", "pos": "x is y", "neg": "z", "key": "k1"},
        {"anchor": "what is w", "pos": "w is v", "neg": "u", "key": "k2"},
        {"anchor": "", "pos": "w is v", "neg": "u", "key": "k3"},
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = {"query": "anchor", "positives": "pos", "negatives": "neg", "id": "key"}
    source = _source(task="ir", format="hf", path="hub_like", hf_columns=mapping)
    result = read_source(source, str(tmp_path))
    assert (result.read, result.kept) == (3, 2)
    assert result.table.slice(1, 1).to_pylist()[0] == {
        "id": "k2",
        "query": "what is w",
        "positives": ["w is v"],
        "negatives": ["u"],
        "positive_ids": [],
        "source": "src",
    }
    (bad,) = result.quarantined
    assert (bad.line, bad.reason) == (3, "empty_text")
    assert result.input_files == [str(folder / "train.jsonl")]


def test_hf_unknown_column_names_the_columns(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("a,b,s\nx,y,1\n")
    mapping = {"sentence1": "a", "sentence2": "b", "score": "label"}
    source = _source(task="sts", format="hf", path="d", hf_columns=mapping)
    with pytest.raises(ValueError, match=r"\['label'\] not in the dataset"):
        read_source(source, str(tmp_path))


def test_format_task_mismatch_and_missing_input_fail_early(tmp_path):
    with pytest.raises(ValueError, match="'src': format 'beir' gives ir records, not task 'sts'"):
        read_source(_source(task="sts", format="beir", path="x"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'src'.*nope.csv"):
        read_source(_source(task="sts", format="stsb", path="nope.csv"), str(tmp_path))
    with pytest.raises(ValueError, match="score_range"):
        read_source(_source(task="sts", format="stsb", path="x", score_range=(5, 5)), ".")


def test_scores_normalised_into_unit_interval(data_root):
    source = _source(task="sts", format="stsb_csv", path="stsb-multi-mt-en/stsb-en-dev.csv")
    scores = read_source(source, str(data_root)).table["score"].to_pylist()
    assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in scores)
    assert scores[:2] == [1.0, pytest.approx(0.95)]
