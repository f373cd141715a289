"""One small bad file per quarantine reason: the count, the entry's file:line and reason, and the stop
above data.max_bad_fraction."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.config import SourceConfig
from pipeline.data.prepare import BadDataError, prepare_sources
from pipeline.data.quarantine import check_bad_fraction, read_quarantine
from pipeline.data.readers import read_source

PAIR = '{"sentence1": "a", "sentence2": "b", "score": 2.5}'
QUERY = '{"query": "q", "positives": ["p"], "negatives": ["n"]}'


def _lines(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


# (name, task, format, file, content, read, kept, bad line, reason)
CASES = [
    ("malformed_json", "sts", "own", "x.jsonl", _lines(PAIR, '{"sentence1": "a" "b"}', PAIR), 3, 2, 2, "malformed_line"),
    ("truncated_jsonl", "sts", "own", "x.jsonl", _lines(PAIR, PAIR) + b'{"sentence1": "a", "sen', 3, 2, 3, "malformed_line"),
    ("not_an_object", "ir", "own", "x.jsonl", _lines(QUERY, '["q", "p"]'), 2, 1, 2, "malformed_line"),
    ("missing_field", "sts", "own", "x.jsonl", _lines(PAIR, '{"sentence1": "a", "score": 1}'), 2, 1, 2, "missing_field"),
    ("empty_text", "ir", "own", "x.jsonl", _lines(QUERY, '{"query": "  ", "positives": ["p"]}'), 2, 1, 2, "empty_text"),
    ("empty_positive", "ir", "own", "x.jsonl", _lines('{"query": "q", "positives": [""]}', QUERY), 2, 1, 1, "empty_text"),
    ("wrong_type", "ir", "own", "x.jsonl", _lines(QUERY, '{"query": "q", "positives": "p"}'), 2, 1, 2, "wrong_type"),
    ("string_score", "sts", "own", "x.jsonl", _lines('{"sentence1": "a", "sentence2": "b", "score": "4"}'), 1, 0, 1, "wrong_type"),
    ("nan_score", "sts", "own", "x.jsonl", _lines(PAIR, PAIR.replace("2.5", "NaN")), 2, 1, 2, "non_finite_score"),
    ("inf_score", "sts", "own", "x.jsonl", _lines(PAIR.replace("2.5", "-Infinity"), PAIR), 2, 1, 1, "non_finite_score"),
    ("score_above", "sts", "own", "x.jsonl", _lines(PAIR, PAIR.replace("2.5", "5.5")), 2, 1, 2, "score_out_of_range"),
    ("score_below", "sts", "own", "x.jsonl", _lines(PAIR.replace("2.5", "-1")), 1, 0, 1, "score_out_of_range"),
    ("no_positive", "ir", "own", "x.jsonl", _lines(QUERY, '{"query": "q2", "positives": []}'), 2, 1, 2, "no_positive"),
    ("duplicate_id", "ir", "own", "x.jsonl", _lines('{"id": 7, "query": "a", "positives": ["p"]}', '{"id": "7", "query": "b", "positives": ["p"]}'), 2, 1, 2, "duplicate_id"),
    ("bad_encoding", "sts", "own", "x.jsonl", _lines(PAIR) + b'{"sentence1": "caf\xe9", "sentence2": "b", "score": 1}\n', 2, 1, 2, "bad_encoding"),
    ("stsb_short_line", "sts", "stsb", "sts.csv", _lines("g\tf\t2012\t0001\t4.0\tA\tB", "g\tf\t2012\t0002\t4.0\tonly one"), 2, 1, 2, "malformed_line"),
    ("stsb_bad_score", "sts", "stsb", "sts.csv", _lines("g\tf\t2012\t0001\tfour\tA\tB"), 1, 0, 1, "wrong_type"),
    ("stsb_latin1", "sts", "stsb", "sts.csv", b"g\tf\t2012\t0001\t4.0\tcaf\xe9\tB\n", 1, 0, 1, "bad_encoding"),
    ("stsb_duplicate", "sts", "stsb", "sts.csv", _lines("g\tf\t2012\t0001\t4.0\tA\tB", "g\tf\t2012\t0001\t3.0\tC\tD"), 2, 1, 2, "duplicate_id"),
    ("csv_open_quote", "sts", "stsb_csv", "p.csv", _lines("A,B,1.0", '"A, B,1.0'), 2, 1, 2, "malformed_line"),
    ("csv_columns", "sts", "stsb_csv", "p.csv", _lines("A,B", "A,B,1.0"), 2, 1, 1, "malformed_line"),
    ("trecqa_label", "ir", "trecqa", "t.csv", _lines("qtext,label,atext", "Q1,1,yes", "Q1,2,maybe"), 2, 1, 3, "wrong_type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "fmt", "file", "content", "read", "kept", "line", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_record_is_quarantined_with_file_line_and_reason(
    tmp_path, task, fmt, file, content, read, kept, line, reason
):
    (tmp_path / file).write_bytes(content)
    result = read_source(SourceConfig(name="s", task=task, format=fmt, path=file), str(tmp_path))
    assert (result.read, result.kept, len(result.quarantined)) == (read, kept, read - kept)
    assert result.table.num_rows == kept
    (bad,) = result.quarantined
    assert (bad.location, bad.reason) == (f"{tmp_path / file}:{line}", reason)
    assert bad.detail


def test_duplicate_id_names_first_occurrence(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(CASES[13][4])
    result = read_source(
        SourceConfig(name="s", task="ir", format="own", path="x.jsonl"), str(tmp_path)
    )
    assert "first seen at" in result.quarantined[0].detail
    assert result.quarantined[0].detail.endswith("x.jsonl:1")


def test_parquet_wrong_column_type(tmp_path):
    table = pa.table({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": ["1.0", "x"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    source = SourceConfig(name="s", task="sts", format="own", path="pairs.parquet")
    result = read_source(source, str(tmp_path))
    assert (result.read, result.kept) == (2, 0)
    assert [(q.line, q.reason) for q in result.quarantined] == [
        (1, "wrong_type"),
        (2, "wrong_type"),
    ]
    assert result.quarantined[0].file == str(tmp_path / "pairs.parquet")


def test_corrupt_parquet_file_is_one_bad_entry_at_line_0(tmp_path):
    folder = tmp_path / "own"
    folder.mkdir()
    pq.write_table(
        pa.table({"sentence1": ["a"], "sentence2": ["b"], "score": [1.0]}), folder / "a.parquet"
    )
    (folder / "b.parquet").write_bytes(b"PAR1 this is not parquet at all")
    result = read_source(
        SourceConfig(name="s", task="sts", format="own", path="own"), str(tmp_path)
    )
    assert (result.read, result.kept) == (2, 1)
    (bad,) = result.quarantined
    assert (bad.location, bad.reason) == (f"{folder / 'b.parquet'}:0", "corrupt_file")


def _beir(folder, qrels: list[str]) -> None:
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
    queries = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]
    (folder / "corpus.jsonl").write_text(_lines(*map(json.dumps, docs)).decode() + "{broken\n")
    (folder / "queries.jsonl").write_text(_lines(*map(json.dumps, queries)).decode())
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\r\n" + "\r\n".join(qrels)
    )


def test_beir_unknown_ids_and_query_without_positive(tmp_path):
    _beir(tmp_path / "b", ["q1\td1\t1", "q1\td2\t1", "q2\td9\t1", "q7\td1\t1", "q1\td2\t0"])
    result = read_source(SourceConfig(name="s", task="ir", format="beir", path="b"), str(tmp_path))
    found = sorted((q.location.replace(f"{tmp_path}/b/", ""), q.reason) for q in result.quarantined)
    assert found == [
        ("corpus.jsonl:3", "malformed_line"),
        ("qrels/train.tsv:4", "unknown_id"),  # document d9
        ("qrels/train.tsv:5", "unknown_id"),  # query q7
        ("queries.jsonl:2", "no_positive"),  # q2 had only d9
    ]
    assert (result.read, result.kept) == (5, 1)
    assert result.skipped == {"non_relevant_qrels": 1}
    (record,) = result.table.to_pylist()
    assert record["positives"] == ["T one", "two"] and record["positive_ids"] == ["d1", "d2"]


def test_snli_bad_label_and_misaligned_files(tmp_path):
    folder = tmp_path / "snli"
    folder.mkdir()
    (folder / "s1.dev").write_bytes(_lines("P .", "P .", "P .", "Q ."))
    (folder / "s2.dev").write_bytes(_lines("yes", "no", "maybe", "x", "extra"))
    (folder / "labels.dev").write_bytes(_lines("entailment", "contradiction", "unsure", "neutral"))
    source = SourceConfig(name="s", task="ir", format="snli", path="snli", split="dev")
    result = read_source(source, str(tmp_path))
    found = [(q.location.replace(f"{folder}/", ""), q.reason) for q in result.quarantined]
    assert found == [("s2.dev:5", "malformed_line"), ("labels.dev:3", "wrong_type")]
    assert (result.read, result.kept) == (3, 1)
    assert result.table.to_pylist()[0]["negatives"] == ["no"]


def test_stop_above_threshold_names_the_source_and_keeps_quarantine(tmp_path):
    (tmp_path / "good.jsonl").write_bytes(_lines(PAIR, PAIR, PAIR, PAIR))
    (tmp_path / "flaky.jsonl").write_bytes(_lines(PAIR, "{oops", PAIR.replace("2.5", "9")))
    sources = [
        SourceConfig(name="good", task="sts", format="own", path="good.jsonl"),
        SourceConfig(name="flaky", task="sts", format="own", path="flaky.jsonl"),
    ]
    out = tmp_path / "out"
    with pytest.raises(BadDataError) as error:
        prepare_sources(sources, str(tmp_path), str(out), max_bad_fraction=0.5)
    message = str(error.value)
    assert "source 'flaky': 2 of 3 records quarantined" in message
    assert "max_bad_fraction=0.5" in message and str(out / "quarantine.jsonl") in message
    entries = read_quarantine(str(out / "quarantine.jsonl"))
    assert [(e["source"], e["line"], e["reason"]) for e in entries] == [
        ("flaky", 2, "malformed_line"),
        ("flaky", 3, "score_out_of_range"),
    ]
    assert not storage.exists(str(out / "manifest.json"))
    manifest = prepare_sources(sources, str(tmp_path), str(out), max_bad_fraction=0.7)
    assert manifest["sources"]["flaky"]["quarantined"] == 2


def test_check_bad_fraction_picks_worst_source():
    counts = {
        "a": {"read": 100, "quarantined": 5, "reasons": {"empty_text": 5}},
        "b": {"read": 10, "quarantined": 3, "reasons": {"no_positive": 3}},
        "c": {"read": 0, "quarantined": 0, "reasons": {}},
    }
    with pytest.raises(
        BadDataError, match=r"source 'c': no records at all .*also over .*\['a', 'b'\]"
    ):
        check_bad_fraction(counts, 0.01, "q.jsonl")
    del counts["c"]
    with pytest.raises(BadDataError, match=r"source 'b': 3 of 10 .*30\.00%.*no_positive"):
        check_bad_fraction(counts, 0.01, "q.jsonl")
    check_bad_fraction(counts, 0.3, "q.jsonl")
