"""The prepare stage: shards, quarantine and manifest whose counts add up; skipped on unchanged inputs."""

from __future__ import annotations

import json

import pytest

import jobs.prepare
from pipeline import storage
from pipeline.config import DataConfig, SourceConfig, load_config
from pipeline.data import prepare
from pipeline.data.prepare import BadDataError, prepare_sources, prepared_shards
from pipeline.data.quarantine import read_quarantine
from pipeline.data.records import SCHEMAS
from pipeline.stages import prepare as prepare_stage

PAIR = {"sentence1": "a", "sentence2": "b", "score": 2.5}
QUERY = {"query": "q", "positives": ["p1", "p2"], "negatives": ["n"]}


def _write(path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def sources(tmp_path) -> list[SourceConfig]:
    _write(tmp_path / "pairs.jsonl", [PAIR, PAIR, "{bad", {**PAIR, "score": float("nan")}])
    _write(tmp_path / "queries.jsonl", [QUERY, {**QUERY, "positives": []}, QUERY, QUERY])
    return [
        SourceConfig(name="pairs", task="sts", format="own", path="pairs.jsonl"),
        SourceConfig(name="queries", task="ir", format="own", path="queries.jsonl"),
    ]


def test_manifest_counts_add_up_and_shards_match(tmp_path, sources):
    out = str(tmp_path / "out")
    manifest = prepare_sources(sources, str(tmp_path), out, max_bad_fraction=0.5)
    pairs, queries = manifest["sources"]["pairs"], manifest["sources"]["queries"]
    assert (pairs["read"], pairs["kept"], pairs["quarantined"]) == (4, 2, 2)
    assert pairs["reasons"] == {"malformed_line": 1, "non_finite_score": 1}
    assert (queries["read"], queries["kept"], queries["quarantined"]) == (4, 3, 1)
    assert (queries["positives"], queries["negatives"]) == (6, 3)
    for entry in manifest["sources"].values():
        assert entry["read"] == entry["kept"] + entry["quarantined"]
        assert sum(entry["reasons"].values()) == entry["quarantined"]
        (item,) = entry["inputs"]
        assert item["sha256"] == storage.file_sha256(item["path"])
        table = storage.read_parquet(entry["shard"])
        assert table.schema == SCHEMAS[entry["task"]] and table.num_rows == entry["kept"]
    assert manifest["totals"] == {"read": 8, "kept": 5, "quarantined": 3}
    entries = read_quarantine(manifest["quarantine"])
    assert [(e["source"], e["line"], e["reason"]) for e in entries] == [
        ("pairs", 3, "malformed_line"),
        ("pairs", 4, "non_finite_score"),
        ("queries", 2, "no_positive"),
    ]
    assert prepared_shards(out) == {
        "ir": [f"{out}/ir/queries.parquet"],
        "sts": [f"{out}/sts/pairs.parquet"],
    }
    assert storage.read_json(f"{out}/manifest.json") == manifest


def test_unchanged_inputs_are_skipped_changed_inputs_rerun(tmp_path, sources, monkeypatch):
    run_dir = str(tmp_path / "run")
    done = tmp_path / "run" / "prepared" / "done.json"

    def stage(sources, max_bad_fraction=0.5) -> dict:
        data = DataConfig(root=str(tmp_path), sources=sources, max_bad_fraction=max_bad_fraction)
        return prepare_stage.run(data, run_dir)

    first = stage(sources)
    first_key = json.loads(done.read_text())["input_hash"]

    def no_reading(*args, **kwargs):
        raise AssertionError("inputs unchanged: nothing should be read")

    with monkeypatch.context() as patch:
        patch.setattr(prepare, "read_source", no_reading)
        assert stage(sources) == first
        with pytest.raises(BadDataError, match="source 'pairs'"):  # the check runs on reuse too
            stage(sources, max_bad_fraction=0.1)

    _write(tmp_path / "pairs.jsonl", [PAIR, PAIR, PAIR, PAIR])  # an input file changes
    second = stage(sources)
    second_key = json.loads(done.read_text())["input_hash"]
    assert second_key != first_key
    assert (second["sources"]["pairs"]["kept"], second["sources"]["pairs"]["quarantined"]) == (4, 0)
    assert len(read_quarantine(second["quarantine"])) == 1

    limited = [sources[0].model_copy(update={"limit": 2}), sources[1]]  # the config changes
    third = stage(limited)
    assert json.loads(done.read_text())["input_hash"] not in (first_key, second_key)
    assert third["sources"]["pairs"]["read"] == 2


def test_bad_source_lists_fail_before_reading(tmp_path, sources):
    with pytest.raises(ValueError, match=r"unique, repeated: \['pairs'\]"):
        prepare_sources([sources[0], sources[0]], str(tmp_path), str(tmp_path / "o"), 0.5)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        prepared_shards(str(tmp_path / "nowhere"))


def test_job_on_the_smoke_preset(tmp_path, data_root, capsys):
    cfg = load_config("smoke", [f"run.root={tmp_path}", f"data.root={data_root}"])
    manifest = jobs.prepare.main(cfg)
    printed = capsys.readouterr().out
    assert "stsb (sts, stsb): read 256, kept 256, quarantined 0" in printed
    assert "scifact (ir, beir): read 96, kept 96, quarantined 0" in printed
    assert f"manifest: {tmp_path}/smoke/prepared/manifest.json" in printed
    shards = prepared_shards(f"{tmp_path}/smoke/prepared")
    assert storage.read_parquet(shards["ir"][0]).num_rows == 96
    assert manifest["sources"]["scifact"]["inputs"][0]["path"].endswith("corpus.jsonl")


def test_prepared_shards_lists_only_tasks_with_sources(tmp_path, sources):
    out = str(tmp_path / "out")
    manifest = prepare_sources(sources[:1], str(tmp_path), out, max_bad_fraction=0.5)
    assert prepared_shards(out) == {"sts": [f"{out}/sts/pairs.parquet"]}
    assert manifest["tasks"] == {"sts": [f"{out}/sts/pairs.parquet"]}
