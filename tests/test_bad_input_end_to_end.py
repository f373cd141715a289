"""Bad input end to end: a data folder mixing real STS-B and SciFact records with every kind of bad
record (a corrupt Parquet shard, wrong column types, a truncated JSONL line, empty strings, NaN / inf /
out-of-range scores, a query without positives, a non-UTF-8 file). The prepare stage quarantines each
one with its file and line and the counts add up; over the bad-fraction budget it stops with one clear
message; (slow) the whole pipeline runs to a registered model on it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SourceConfig, load_config
from pipeline.data.prepare import BadDataError, prepare_sources
from pipeline.data.quarantine import read_quarantine

SOURCES = [
    SourceConfig(
        name="stsb", task="sts", format="stsb", path="stsbenchmark/sts-train.csv", limit=256
    ),
    SourceConfig(name="scifact", task="ir", format="beir", path="scifact-beir", limit=96),
    SourceConfig(name="own-sts", task="sts", format="own", path="own/sts"),
    SourceConfig(name="own-ir", task="ir", format="own", path="own/ir"),
]


def _stsb_pairs(data_root: Path, start: int, count: int) -> list[dict]:
    """Real STS-B training pairs (0-5 scores), from line ``start`` on."""
    with open(data_root / "stsbenchmark" / "sts-train.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[start:]
    return [{"sentence1": r[5], "sentence2": r[6], "score": float(r[4])} for r in rows[:count]]


def _scifact_queries(data_root: Path, count: int) -> list[dict]:
    """Real SciFact training queries with their relevant abstracts as positives."""
    folder = data_root / "scifact-beir"
    queries = {}
    for line in (folder / "queries.jsonl").open():
        row = json.loads(line)
        queries[row["_id"]] = row["text"]
    docs = {}
    for line in (folder / "corpus.jsonl").open():
        row = json.loads(line)
        docs[row["_id"]] = f"{row['title']} {row['text']}".strip()
    positives: dict[str, list[str]] = {}
    for line in list((folder / "qrels" / "train.tsv").open())[1:]:
        qid, doc, _ = line.split("\t")
        positives.setdefault(qid, []).append(docs[doc])
    # the last ids of the split: not among the first 96 the scifact source reads
    chosen = list(positives)[-count:]
    return [{"query": queries[q], "positives": positives[q]} for q in chosen]


def _write_lines(path: Path, lines: list[str], tail: bytes = b"") -> None:
    path.write_bytes("".join(f"{line}\n" for line in lines).encode() + tail)


def build_bad_data(data_root: Path, root: Path) -> list[tuple[str, str, int, str]]:
    """The folder under ``root``; returns every planted bad record as (source, file, line, reason),
    in the order the quarantine lists them."""
    for folder in ("stsbenchmark", "scifact-beir"):  # the real sources, unchanged
        (root / folder).symlink_to((data_root / folder).resolve())
    sts, ir = root / "own" / "sts", root / "own" / "ir"
    sts.mkdir(parents=True)
    ir.mkdir(parents=True)
    bad: list[tuple[str, str, int, str]] = []

    # own/sts, files in the order the reader lists them (sorted names)
    pq.write_table(pa.Table.from_pylist(_stsb_pairs(data_root, 400, 20)), sts / "a-good.parquet")
    (sts / "b-corrupt.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    bad.append(("own-sts", str(sts / "b-corrupt.parquet"), 0, "corrupt_file"))
    wrong = pa.table({"sentence1": ["a cat", "a dog"], "sentence2": ["cats", "dogs"]})
    wrong = wrong.append_column("score", pa.array(["high", "4"]))  # strings, not numbers
    pq.write_table(wrong, sts / "c-wrong-types.parquet")
    bad += [("own-sts", str(sts / "c-wrong-types.parquet"), n, "wrong_type") for n in (1, 2)]
    pairs = [json.dumps(p) for p in _stsb_pairs(data_root, 500, 40)]
    planted = {
        5: ('{"sentence1": "A man sings.", "sentence2": "A man sings.", "score": NaN}', "non_finite_score"),
        9: ('{"sentence1": "A dog runs.", "sentence2": "A cat runs.", "score": Infinity}', "non_finite_score"),
        14: ('{"sentence1": "Rain falls.", "sentence2": "It rains.", "score": 7.5}', "score_out_of_range"),
        20: ('{"sentence1": "", "sentence2": "Something.", "score": 2.0}', "empty_text"),
        25: ('{"sentence1": "A boy.", "sentence2": "A girl.", "score": "three"}', "wrong_type"),
        31: ('{"sentence1": "No partner here."}', "missing_field"),
    }  # fmt: skip
    for line, (text, _) in sorted(planted.items()):
        pairs.insert(line - 1, text)
    _write_lines(sts / "d-pairs.jsonl", pairs, tail=b'{"sentence1": "cut off mid-wr')
    bad += [("own-sts", str(sts / "d-pairs.jsonl"), n, r) for n, (_, r) in sorted(planted.items())]
    bad.append(("own-sts", str(sts / "d-pairs.jsonl"), len(pairs) + 1, "malformed_line"))
    latin1 = [f"{json.dumps(p, ensure_ascii=False)}\n" for p in _stsb_pairs(data_root, 600, 3)]
    latin1 = [line.replace(".", " caf\u00e9.", 1) for line in latin1]
    (sts / "e-latin1.jsonl").write_bytes("".join(latin1).encode("latin-1"))
    bad += [("own-sts", str(sts / "e-latin1.jsonl"), n, "bad_encoding") for n in (1, 2, 3)]

    queries = [json.dumps(q) for q in _scifact_queries(data_root, 30)]
    planted_ir = {
        4: ('{"query": "Does aspirin prevent stroke?", "positives": []}', "no_positive"),
        11: ('{"query": "   ", "positives": ["An abstract."]}', "empty_text"),
        17: ('{"query": "What causes tides?", "positives": "The moon."}', "wrong_type"),
    }
    for line, (text, _) in sorted(planted_ir.items()):
        queries.insert(line - 1, text)
    _write_lines(ir / "queries.jsonl", queries)
    bad += [("own-ir", str(ir / "queries.jsonl"), n, r) for n, (_, r) in sorted(planted_ir.items())]
    return bad


@pytest.fixture()
def bad_root(tmp_path, data_root):
    root = tmp_path / "data"
    root.mkdir()
    return root, build_bad_data(data_root, root)


def test_quarantine_lists_every_bad_record_and_the_counts_add_up(bad_root, tmp_path):
    root, planted = bad_root
    out = tmp_path / "prepared"
    manifest = prepare_sources(SOURCES, str(root), str(out), max_bad_fraction=0.3)
    entries = read_quarantine(str(out / "quarantine.jsonl"))
    found = [(e["source"], e["file"], e["line"], e["reason"]) for e in entries]
    assert [f for f in found if f[0].startswith("own-")] == planted
    assert all(e["detail"] for e in entries)

    for name, entry in manifest["sources"].items():
        assert entry["read"] == entry["kept"] + entry["quarantined"], name
        assert entry["quarantined"] == sum(1 for e in entries if e["source"] == name)
        assert sum(entry["reasons"].values()) == entry["quarantined"]
        assert pq.read_table(entry["shard"]).num_rows == entry["kept"]
    own_sts = manifest["sources"]["own-sts"]
    # 20 + 2 Parquet rows, 1 unreadable file, 40 + 6 + 1 JSONL lines, 3 Latin-1 lines
    assert (own_sts["read"], own_sts["kept"]) == (73, 60)
    assert (manifest["sources"]["own-ir"]["read"], manifest["sources"]["own-ir"]["kept"]) == (
        33,
        30,
    )
    totals = manifest["totals"]
    assert (
        totals["read"]
        == totals["kept"] + totals["quarantined"]
        == sum(e["read"] for e in manifest["sources"].values())
    )
    kept = pq.read_table(manifest["sources"]["own-sts"]["shard"]).column("score").to_pylist()
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in kept)


def test_quarantine_over_the_budget_stops_with_one_clear_message(bad_root, tmp_path):
    root, planted = bad_root
    out = tmp_path / "prepared"
    with pytest.raises(BadDataError) as error:
        prepare_sources(SOURCES, str(root), str(out), max_bad_fraction=0.05)
    message = str(error.value)
    assert "source 'own-sts': 13 of 73 records quarantined" in message
    assert str(out / "quarantine.jsonl") in message and "max_bad_fraction=0.05" in message
    assert len(read_quarantine(str(out / "quarantine.jsonl"))) >= len(planted)  # nothing lost
    assert not (out / "manifest.json").exists()


@pytest.mark.slow  # about 4 min here: the smoke pipeline on the bad folder
def test_quarantine_pipeline_finishes_on_bad_input(bad_root, tmp_path, ray_session):
    from smoke_outputs import assert_smoke_run_outputs

    from jobs import pipeline

    root, planted = bad_root
    cfg = load_config(
        "smoke", [f"run.root={tmp_path / 'runs'}", f"data.root={root}", "data.max_bad_fraction=0.3"]
    )
    cfg.data.sources = SOURCES
    pipeline.main(cfg)
    run_dir = tmp_path / "runs" / "smoke"
    assert_smoke_run_outputs(run_dir)
    entries = read_quarantine(str(run_dir / "prepared" / "quarantine.jsonl"))
    own = [(e["source"], e["file"], e["line"], e["reason"]) for e in entries]
    assert [e for e in own if e[0].startswith("own-")] == planted
    mined = json.loads((run_dir / "mined" / "stats.json").read_text())
    assert "own-ir" in json.dumps(mined)  # the own IR source was mined and trained on
