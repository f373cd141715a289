"""Padded IR tokens of an epoch with a task's sources mixed in every batch against one source per
batch (``sampler.one_source_per_batch``), on a run's mined IR shards; no Ray, no model.

    .venv/bin/python bench/source_batches.py --config reproduce --out bench/results/source_batches-cpu.json
    .venv/bin/python bench/source_batches.py --quick --out /tmp/source_batches.json   # smoke preset

The encoder's work in an IR step is about proportional to the padded tokens it is given (query,
positives and negatives of a micro-batch, each padded to its longest text, as
:func:`pipeline.data.batches.collate_ir` pads them). Mixing a corpus of short sentences (SNLI) with
one of long abstracts (SciFact) pads the short ones to the long ones' length. For each of
``--epochs`` seeded shuffles the IR records are cut into per-worker micro-batches (the config's
``ir_global_batch`` / ``num_workers``, the last incomplete global batch of each stream dropped, as
training does), tokenised with the config's limits and collated by the project's own functions;
the table gives the median over epochs of the padded tokens per epoch and per step, and ``ratio`` =
one source / mixed (below 1: fewer tokens through the encoder per epoch). Tokens are not seconds:
the step time of a real run is in its ``metrics.jsonl`` (``step_seconds``, ``ir_sources``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import finish, machine  # noqa: E402
from bench.ray_runs import bench_config  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.data.batches import collate_ir, padded_tokens  # noqa: E402
from pipeline.data.mine_sources import mined_shards  # noqa: E402
from pipeline.data.ray_datasets import tokenize_ir  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.model.loading import resolve_model_path  # noqa: E402


def tokenized_sources(cfg: Config) -> dict[str, pa.Table]:
    """Each mined IR source of the run, tokenised as the trainer's datasets tokenise it."""
    text = cfg.model.text_settings()
    tokenizer = resolve_model_path(cfg.model.name_or_path)
    tables = {}
    for name, path in sorted(mined_shards(storage.join(cfg.run.dir, "mined")).items()):
        tables[name] = tokenize_ir(
            pq.read_table(path),
            tokenizer_path=tokenizer,
            max_length_query=text.max_length_query,
            max_length_passage=cfg.train.passage_length(cfg.model),
            instruction=text.instruction_ir,
        )
    return tables


def micro_batches(table: pa.Table, rng: np.random.Generator, per_worker: int, workers: int):
    """A seeded shuffle of ``table`` cut into full global batches, each as its workers' slices."""
    rows = table.take(rng.permutation(len(table)))
    glob = per_worker * workers
    for start in range(0, len(rows) - glob + 1, glob):
        for worker in range(workers):
            yield rows.slice(start + worker * per_worker, per_worker)


def epoch_tokens(
    sources: dict[str, pa.Table], by_source: bool, seed: int, per_worker: int, workers: int
) -> tuple[int, int]:
    """(padded IR tokens, IR steps) of one epoch; pad id 0 (the count does not depend on it)."""
    rng = np.random.default_rng(seed)
    streams = list(sources.values()) if by_source else [pa.concat_tables(sources.values())]
    tokens = micro = 0
    for table in streams:
        for batch in micro_batches(table, rng, per_worker, workers):
            tokens += padded_tokens(collate_ir(batch, pad_id=0))
            micro += 1
    return tokens, micro // workers


def measure(cfg: Config, epochs: int) -> dict:
    """Median padded tokens per epoch and per step of both layouts over ``epochs`` shuffles."""
    sources = tokenized_sources(cfg)
    workers = cfg.train.num_workers
    per_worker = cfg.train.ir_global_batch // workers
    rows = {}
    for label, by_source in (("mixed", False), ("one_source", True)):
        runs = [
            epoch_tokens(sources, by_source, seed, per_worker, workers) for seed in range(epochs)
        ]
        per_epoch = statistics.median(t for t, _ in runs)
        steps = statistics.median(s for _, s in runs)
        rows[label] = {
            "tokens_per_epoch": per_epoch,
            "steps": steps,
            "tokens_per_step": per_epoch / steps,
        }
    return {
        "sources": {name: len(table) for name, table in sources.items()},
        "per_worker_batch": per_worker,
        "workers": workers,
        "epochs": epochs,
        "layouts": rows,
        "ratio": rows["one_source"]["tokens_per_epoch"] / rows["mixed"]["tokens_per_epoch"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="reproduce", help="preset whose run dir holds mined/")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--quick", action="store_true", help="the smoke preset, prepared now")
    parser.add_argument("--epochs", type=int, default=5, help="seeded shuffles (median)")
    parser.add_argument("--out", required=True, help="JSON report path")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        cfg = bench_config(args.config, args.overrides, scratch if args.quick else None)
        report = measure(cfg, args.epochs)
    report["machine"] = machine(torch.device("cpu"))
    report["config"] = args.config if not args.quick else "smoke"
    columns = {"tokens_per_epoch": "padded tokens / epoch", "steps": "IR steps / epoch"}
    columns["tokens_per_step"] = "tokens / step"
    table = markdown_table(
        {label: {columns[k]: v for k, v in r.items()} for label, r in report["layouts"].items()},
        list(columns.values()),
        digits=0,
        index_name="IR batches",
    )
    return finish(report, table, args.out, label="one source / mixed, padded tokens per epoch")


if __name__ == "__main__":
    main()
