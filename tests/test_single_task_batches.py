"""Single-task batches on Ray Data: the collate functions, then one 2-worker Ray Train run (gloo, CPU)
over real STS-B, SciFact and TREC-QA records that walks the schedule in three ways (proportional,
ratio p=0.25, and ratio restarted mid-epoch) for 2 epochs and logs every step of every worker."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import SourceConfig, TextSettings
from pipeline.data.batches import (
    SingleTaskBatches,
    collate_ir,
    collate_sts,
    padded_tokens,
    per_worker_batches,
)
from pipeline.data.prepare import prepare_sources, prepared_shards, prepared_sources
from pipeline.data.ray_datasets import (
    build_task_datasets,
    count_batches,
    ingest_config,
    tokenize_ir,
    tokenize_sts,
)
from pipeline.data.records import IR_SCHEMA, STS_SCHEMA
from pipeline.data.schedule import (
    SOURCE_SEP,
    TASK_ORDER,
    TaskSchedule,
    schedule_for_run,
    stream_key,
    task_batches,
)
from pipeline.model.loading import packaged_model_path

SEED = 49
EPOCHS = 2
GLOBAL_BATCH = {"ir": 8, "sts": 16}
SOURCES = [
    SourceConfig(
        name="stsb", task="sts", format="stsb", path="stsbenchmark/sts-train.csv", limit=300
    ),
    SourceConfig(name="scifact", task="ir", format="beir", path="scifact-beir", limit=100),
    SourceConfig(name="trecqa", task="ir", format="trecqa", path="trecqa-wang/train.csv", limit=20),
]
TEXT = TextSettings(
    max_length_query=32,
    max_length_passage=64,
    max_length_sts=32,
    instruction_ir="",
    instruction_sts="",
)


# ------------------------------------------------------------------------------- collate, no Ray


def _tokenized(task: str, records: list[dict]) -> pa.Table:
    schema = IR_SCHEMA if task == "ir" else STS_SCHEMA
    table = pa.Table.from_pylist(records, schema=schema)
    if task == "ir":
        lengths = {"max_length_query": 16, "max_length_passage": 16}
        return tokenize_ir(
            table, tokenizer_path=packaged_model_path(), instruction="find", **lengths
        )
    return tokenize_sts(table, tokenizer_path=packaged_model_path(), max_length=16)


def test_collate_ir_pads_positives_and_negatives_with_masks():
    one = {"id": "a", "query": "q one", "positives": ["p"], "negatives": [], "positive_ids": ["d"]}
    two = {
        "id": "b",
        "query": "a longer query two",
        "positives": ["p one", "p two two"],
        "negatives": ["n1", "n two", "n three three"],
        "positive_ids": [],
    }
    table = _tokenized("ir", [{**r, "source": "s"} for r in (one, two)])
    assert "query" not in table.column_names and table.schema.field("id").type == pa.string()
    batch = collate_ir(table, pad_id=0)
    assert batch["ids"] == ["a", "b"] and batch["sources"] == ["s", "s"]
    assert batch["positive_mask"].tolist() == [[True, False], [True, True]]
    assert batch["negative_mask"].tolist() == [[False, False, False], [True, True, True]]
    pos = batch["positives"]
    assert pos["input_ids"].shape[:2] == (2, 2)
    assert batch["negatives"]["input_ids"].shape[:2] == (2, 3)
    assert pos["attention_mask"][0, 1].sum() == 0  # empty slot: all padding
    lengths = pos["attention_mask"].sum(-1)
    for i, row in enumerate(table.column("positives_input_ids").to_pylist()):
        for p, ids in enumerate(row):
            assert pos["input_ids"][i, p, : lengths[i, p]].tolist() == ids
    query = batch["query"]
    assert (query["pool_mask"] <= query["attention_mask"]).all()
    assert query["pool_mask"].sum() < query["attention_mask"].sum()  # instruction masked out
    only_positives = collate_ir(table.slice(0, 1), pad_id=0)
    assert only_positives["negatives"]["input_ids"].shape == (1, 0, 0)


def test_collate_sts_pads_each_side():
    records = [
        {"id": "1", "sentence1": "a b c d", "sentence2": "x", "score": 0.2, "source": "s"},
        {"id": "2", "sentence1": "a", "sentence2": "x y z", "score": 1.0, "source": "s"},
    ]
    batch = collate_sts(_tokenized("sts", records), pad_id=0)
    assert batch["score"].dtype == torch.float32
    assert batch["score"].tolist() == pytest.approx([0.2, 1.0])
    for side in ("sentence1", "sentence2"):
        mask = batch[side]["attention_mask"]
        assert mask.shape == batch[side]["input_ids"].shape and mask.sum(1).min() < mask.shape[1]
        assert torch.equal(batch[side]["pool_mask"], mask)  # no instruction: pool = attention


class _TableShard:
    """A stand-in for a Ray DataIterator: full micro-batches of a seeded permutation of a table."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def iter_batches(self, *, batch_size, local_shuffle_seed, **_):
        order = np.random.default_rng(local_shuffle_seed).permutation(len(self.table))
        rows = self.table.take(order)
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            yield rows.slice(start, batch_size)


def _fake_shards() -> dict[str, _TableShard]:
    ir = [
        {"id": f"q{i}", "query": f"query {i}", "positives": ["p"] * (1 + i % 2)}
        | {"negatives": ["n"] * (i % 3), "positive_ids": [], "source": "fake"}
        for i in range(6)
    ]
    sts = [
        {"id": f"s{i}", "sentence1": "a " * (i + 1), "sentence2": "b", "score": i / 9}
        | {"source": "fake"}
        for i in range(10)
    ]
    return {"ir": _TableShard(_tokenized("ir", ir)), "sts": _TableShard(_tokenized("sts", sts))}


def _walk_epochs(shards, base: TaskSchedule, start_step: int = 0) -> list[tuple]:
    """``(global_step, task, ids)`` of 2 epochs with 2-row micro-batches."""
    per_worker = {"ir": 2, "sts": 2}
    return [
        (step, task, batch["ids"])
        for epoch in range(2)
        for step, task, batch in SingleTaskBatches(
            shards, base.for_epoch(epoch), per_worker, 0, start_step=start_step
        )
    ]


def test_iterator_walks_the_schedule_and_resumes_without_ray():
    shards = _fake_shards()
    base = TaskSchedule({"ir": 3, "sts": 5}, mode="proportional", seed=SEED)
    full = _walk_epochs(shards, base)
    assert [task for _, task, _ in full] == list(base) + list(base.for_epoch(1))
    for e in range(2):
        seen = [i for step, _, ids in full if base.locate(step)[0] == e for i in ids]
        assert len(seen) == len(set(seen)) == 16  # every record once per epoch
    k = len(base) + 3
    assert _walk_epochs(shards, base, start_step=k) == full[k:]


def _source_shards() -> tuple[dict[str, _TableShard], dict[str, dict[str, int]]]:
    """Two IR sources (6 and 4 records) and one STS source as streams; 2-row micro-batches."""
    ir = {
        name: [
            {"id": f"{name}{i}", "query": f"q {i}", "positives": ["p"], "negatives": ["n"]}
            | {"positive_ids": [], "source": name}
            for i in range(n)
        ]
        for name, n in (("a", 6), ("b", 4))
    }
    shards = {stream_key("ir", n): _TableShard(_tokenized("ir", rows)) for n, rows in ir.items()}
    return shards | {"sts": _fake_shards()["sts"]}, {"ir": {"ir:a": 3, "ir:b": 2}}


def test_one_source_per_batch_reads_each_batch_from_its_scheduled_source():
    shards, sources = _source_shards()
    base = TaskSchedule({"ir": 5, "sts": 5}, seed=SEED, source_batches=sources)
    full = _walk_epochs(shards, base)
    for e in range(2):
        schedule = base.for_epoch(e)
        ir_ids = [ids for step, task, ids in full if task == "ir" and base.locate(step)[0] == e]
        # every micro-batch from one source, in the schedule's order of sources
        assert [{i[0] for i in ids} for ids in ir_ids] == [
            {key[-1]} for key in schedule.sources("ir")
        ]
        seen = [i for ids in ir_ids for i in ids]
        assert len(seen) == len(set(seen)) == 10  # every record of both sources once
    k = len(base) + 4
    assert _walk_epochs(shards, base, start_step=k) == full[k:]
    with pytest.raises(ValueError, match=r"stream\(s\) \['ir:b'\]"):
        SingleTaskBatches(
            {"ir:a": shards["ir:a"]}, TaskSchedule({"ir": 5}, source_batches=sources), {"ir": 2}, 0
        )


def test_mixed_steps_hold_one_micro_batch_of_each_task():
    schedule = schedule_for_run("mixed", "proportional", {"ir": 3, "sts": 5}, seed=SEED)
    steps = list(SingleTaskBatches(_fake_shards(), schedule, {"ir": 2, "sts": 2}, pad_id=0))
    assert [(step, task) for step, task, _ in steps] == [(0, "mixed"), (1, "mixed"), (2, "mixed")]
    assert all(len(b["ir"]["ids"]) == len(b["sts"]["ids"]) == 2 for _, _, b in steps)


def test_schedule_asking_for_more_batches_than_the_shard_has_fails_clearly():
    schedule = TaskSchedule({"sts": 6}, seed=SEED)
    with pytest.raises(RuntimeError, match="sts shard ran out of micro-batches at step 5"):
        list(SingleTaskBatches(_fake_shards(), schedule, {"sts": 2}, pad_id=0))


def test_per_worker_batches_must_split_evenly():
    assert per_worker_batches(GLOBAL_BATCH, 2) == {"ir": 4, "sts": 8}
    with pytest.raises(ValueError, match="not divisible"):
        per_worker_batches({"ir": 6}, 4)


# ------------------------------------------------------------------ the 2-worker Ray Train run


def _source_index(batch: dict) -> int:
    """Position of the micro-batch's source in ``SOURCES``; -1 when its records mix sources."""
    names = {s.name for s in SOURCES}
    (source, *others) = set(batch["sources"])
    return -1 if others else sorted(names).index(source)


def _walk(config: dict) -> None:
    """The per-worker loop: walk every run's schedule, all-gather the task id at every step."""
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    streams = config["streams"]
    shards = {key: ray.train.get_dataset_shard(key) for key in streams}
    per_worker = per_worker_batches(config["global_batch"], world)
    log = {}
    for run in config["runs"]:
        by_source = config["source_batches"] if run.get("by_source") else {}
        num_batches = config["num_batches"] | {t: sum(b.values()) for t, b in by_source.items()}
        base = TaskSchedule(
            num_batches,
            mode=run["mode"],
            seed=SEED,
            ir_ratio=0.25,
            source_batches=by_source,
        )
        steps = []
        for epoch in range(EPOCHS):
            schedule = base.for_epoch(epoch)
            batches = SingleTaskBatches(shards, schedule, per_worker, 0, start_step=run["start"])
            for step, task, batch in batches:
                # the task, and which source each of the micro-batch's records comes from
                mine = torch.tensor([TASK_ORDER.index(task), _source_index(batch)])
                everyone = [torch.zeros_like(mine) for _ in range(world)]
                dist.all_gather(everyone, mine)
                size = len(batch["ids"])
                assert size == per_worker[task]
                if task == "ir":
                    assert batch["query"]["input_ids"].shape[0] == size
                    assert batch["positive_mask"].sum(1).min() >= 1
                else:
                    assert (
                        batch["sentence1"]["input_ids"].shape[0] == batch["score"].shape[0] == size
                    )
                steps.append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "task": task,
                        "gathered": [TASK_ORDER[int(t[0])] for t in everyone],
                        "sources": [int(t[1]) for t in everyone],
                        "records": [f"{s}/{i}" for s, i in zip(batch["sources"], batch["ids"])],
                    }
                )
        log[run["name"]] = steps
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(log))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_root) -> str:
    out = str(tmp_path_factory.mktemp("prepared"))
    prepare_sources(
        SOURCES, str(data_root), out, max_bad_fraction=0.1
    )  # 1 TREC-QA question lacks a positive
    return out


@pytest.fixture(scope="module")
def shards(prepared) -> dict[str, list[str]]:
    return prepared_shards(prepared)


@pytest.fixture(scope="module")
def source_streams(prepared) -> dict[str, list[str]]:
    """The IR sources as streams of their own (``sampler.one_source_per_batch``)."""
    return {stream_key("ir", n): [path] for n, path in prepared_sources(prepared)["ir"].items()}


@pytest.fixture(scope="module")
def counts(shards):
    return count_batches(shards, GLOBAL_BATCH)


@pytest.fixture(scope="module")
def walk(ray_session, shards, source_streams, counts, tmp_path_factory) -> dict:
    """Run the 2-worker trainer once; returns ``{run name: [steps of rank 0, steps of rank 1]}``."""
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

    source_batches = {k: c.batches for k, c in count_batches(source_streams, GLOBAL_BATCH).items()}
    num_batches = {task: c.batches for task, c in counts.items()}
    ratio = TaskSchedule(num_batches, mode="ratio", seed=SEED, ir_ratio=0.25)
    out = tmp_path_factory.mktemp("walk")
    streams = {"ir": shards["ir"], "sts": shards["sts"]} | source_streams
    config = {
        "num_batches": num_batches,
        "source_batches": {"ir": source_batches},
        "streams": list(streams),
        "global_batch": GLOBAL_BATCH,
        "out": str(out),
        "runs": [
            {"name": "proportional", "mode": "proportional", "start": 0},
            {"name": "ratio", "mode": "ratio", "start": 0},
            {"name": "ratio_resumed", "mode": "ratio", "start": len(ratio) + 7},
            {"name": "by_source", "mode": "proportional", "start": 0, "by_source": True},
            {"name": "by_source_resumed", "mode": "proportional", "by_source": True}
            | {"start": sum(source_batches.values()) + counts["sts"].batches + 5},  # in epoch 1
        ],
    }
    datasets = build_task_datasets(
        streams, tokenizer_path=packaged_model_path(), text=TEXT, seed=SEED
    )
    TorchTrainer(
        _walk,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets=datasets,
        dataset_config=ingest_config(),
        run_config=RunConfig(name="walk", storage_path=str(out / "ray")),
    ).fit()
    logs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {name: [log[name] for log in logs] for name in logs[0]}


def _all_records(shards) -> dict[str, set[str]]:
    tables = {t: pa.concat_tables([pq.read_table(p) for p in ps]) for t, ps in shards.items()}
    return {
        t: {f"{s}/{i}" for s, i in zip(tab["source"].to_pylist(), tab["id"].to_pylist())}
        for t, tab in tables.items()
    }


def test_task_ids_agree_on_every_step(walk):
    for name, (rank0, rank1) in walk.items():
        assert [s["step"] for s in rank0] == [s["step"] for s in rank1], name
        for a, b in zip(rank0, rank1):
            assert a["gathered"] == b["gathered"] == [a["task"], a["task"]], (name, a["step"])


def test_every_kept_record_seen_once_per_epoch(walk, shards, counts):
    records = _all_records(shards)
    for task, c in counts.items():
        print(f"{task}: {c.rows} rows = {c.batches} x {c.global_batch} + {c.dropped} dropped")
        assert c.batches > 0 and 0 <= c.dropped < c.global_batch
    for epoch in range(EPOCHS):
        steps = [s for rank in walk["proportional"] for s in rank if s["epoch"] == epoch]
        for task, c in counts.items():
            seen = Counter(r for s in steps if s["task"] == task for r in s["records"])
            assert max(seen.values()) == 1, f"{task} epoch {epoch}: a record was seen twice"
            assert len(seen) == c.batches * c.global_batch == c.rows - c.dropped
            assert set(seen) <= records[task]
            ratio_steps = [s for rank in walk["ratio"] for s in rank if s["epoch"] == epoch]
            used = Counter(r for s in ratio_steps if s["task"] == task for r in s["records"])
            assert max(used.values()) == 1  # the balancing modes use a record at most once
    first, second = (
        [s["records"] for s in walk["proportional"][0] if s["epoch"] == e] for e in (0, 1)
    )
    assert first != second  # reshuffled every epoch


def test_ratio_mode_gives_a_quarter_of_ir_steps(walk, counts):
    num_batches = {task: c.batches for task, c in counts.items()}
    for epoch in range(EPOCHS):
        tasks = [s["task"] for s in walk["ratio"][0] if s["epoch"] == epoch]
        expected = TaskSchedule(num_batches, mode="ratio", seed=SEED, epoch=epoch, ir_ratio=0.25)
        assert tasks == list(expected)
        assert abs(tasks.count("ir") - 0.25 * len(tasks)) <= 1, Counter(tasks)


def test_restart_from_step_k_continues_identically(walk):
    for name in ("ratio", "by_source"):
        for uninterrupted, resumed in zip(walk[name], walk[f"{name}_resumed"]):
            k = resumed[0]["step"]
            assert k > len([s for s in uninterrupted if s["epoch"] == 0])  # batches skipped
            assert resumed == [s for s in uninterrupted if s["step"] >= k]


def test_one_source_per_batch_on_every_worker(walk, source_streams):
    """``sampler.one_source_per_batch``: at every IR step both workers read the same source, the
    one the schedule names, and each source's kept records are seen once per epoch."""
    names = sorted(s.name for s in SOURCES)
    counts = count_batches(source_streams, GLOBAL_BATCH)
    num_batches, sources = task_batches({key: c.batches for key, c in counts.items()})
    rank0, rank1 = walk["by_source"]
    for epoch in range(EPOCHS):
        schedule = TaskSchedule(num_batches, seed=SEED, epoch=epoch, source_batches=sources)
        ir0 = [s for s in rank0 if s["epoch"] == epoch and s["task"] == "ir"]
        ir1 = [s for s in rank1 if s["epoch"] == epoch and s["task"] == "ir"]
        expected = [names.index(key.split(SOURCE_SEP)[1]) for key in schedule.sources("ir")]
        assert [s["sources"] for s in ir0] == [s["sources"] for s in ir1]
        assert [s["sources"] for s in ir0] == [[i, i] for i in expected]
        for key, c in counts.items():
            source = key.split(SOURCE_SEP)[1]
            seen = Counter(r for s in ir0 + ir1 for r in s["records"] if r.startswith(source))
            assert max(seen.values()) == 1 and len(seen) == c.batches * c.global_batch, key
    mixed = [s["sources"][0] for s in walk["proportional"][0] if s["task"] == "ir"]
    assert -1 in mixed  # without the option a task's sources share micro-batches


def test_iterator_caps_ir_micro_batches_at_max_tokens():
    ir = [
        {"id": f"q{i}", "query": "query", "positives": ["word " * 60], "negatives": ["text " * 40]}
        | {"positive_ids": [], "source": "fake"}
        for i in range(4)
    ]
    shards = {"ir": _TableShard(_tokenized("ir", ir))}  # passages cut at 16 tokens by the tokenizer
    schedule = TaskSchedule({"ir": 2}, seed=SEED)
    full = list(SingleTaskBatches(shards, schedule, {"ir": 2}, pad_id=0))
    query_tokens = full[0][2]["query"]["input_ids"].numel()
    budget = query_tokens + 4 * 12  # 2 queries x (1 positive + 1 negative) of 12 tokens
    with pytest.warns(UserWarning, match="step 0: IR micro-batch"):
        steps = list(SingleTaskBatches(shards, schedule, {"ir": 2}, 0, max_tokens=budget))
    assert [step for step, _, _ in steps] == [step for step, _, _ in full]
    for (_, _, capped), (_, _, whole) in zip(steps, full, strict=True):
        assert padded_tokens(whole) > budget >= padded_tokens(capped)
        assert capped["passage_tokens_cap"] == 12 and capped["ids"] == whole["ids"]
