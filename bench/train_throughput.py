"""Training throughput on CPU, one process: this project's step against sentence-transformers'.

    python bench/train_throughput.py --out bench/results/train_throughput-cpu.json
    python bench/train_throughput.py --quick --out /tmp/train_throughput.json       # < 1 minute
    python bench/train_throughput.py --config reproduce train.ir_global_batch=8 --out ...  # overrides

Same model (the config's, all-MiniLM-L6-v2 for ``reproduce``), same records, same batch sizes and max
lengths (the config's global batches, held by one process), two step kinds:

- IR: SciFact train queries, each with its first positive and ``mining.num_negatives`` hard negatives
  (the mine stage's output when ``<run dir>/mined`` has it, else random SciFact corpus documents; the
  script says which). Ours: ``train_step`` on ``collate_ir`` batches (multi-positive InfoNCE);
  sentence-transformers: ``MultipleNegativesRankingLoss`` on columns anchor, positive, negative_1..N.
- STS: STS-B train pairs. Ours: ``train_step`` with the config's STS loss (CoDiEmb's default:
  MidNCE + PRO + Pearson + RankKL); sentence-transformers: ``CoSENTLoss``.

Ours is the loop's own call (``pipeline.train.step.train_step``, AdamW and the linear schedule of
``pipeline.train.optim``) on batches tokenised and padded as the Ray Data path does
(``tokenize_ir`` / ``tokenize_sts``, then ``collate_*``). sentence-transformers' step is driven
directly (``bench.gpu_step.st_train_step``: ``loss(features, labels)``, backward, clip, the
optimizer ``SentenceTransformerTrainer`` picks by default, schedule), on features from
``model.preprocess(column, max_length=...)`` per column, as its data collator builds them. Token
counts of both are checked equal. Tokenisation and padding are outside the timed steps for both (the
project does them in Ray Data, sentence-transformers in its data loader).

After ``--warmup`` untimed steps each, ``--windows`` timed windows per system run interleaved (ours,
theirs, ours, ...), so background load hits both alike; medians are reported, and ``ratio`` (ours /
theirs pairs/s) is the smaller of the two step kinds' ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import OURS, THEIRS, compare, finish, machine, rates  # noqa: E402
from bench.gpu_step import Systems, token_counts  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.config import Config, SourceConfig, load_config  # noqa: E402
from pipeline.data.batches import collate_ir, collate_sts  # noqa: E402
from pipeline.data.beir import BeirSplit, load_corpus  # noqa: E402
from pipeline.data.mine_sources import STATS_FILE, mined_shards  # noqa: E402
from pipeline.data.ray_datasets import tokenize_ir, tokenize_sts  # noqa: E402
from pipeline.data.readers import read_source, source_path  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.model.tokenize import instruction_prefix  # noqa: E402
from pipeline.train.step import LossSettings, batch_size_and_tokens  # noqa: E402

QUICK = [  # config overrides of --quick: tiny batches, short passages
    "train.ir_global_batch=2",
    "train.sts_global_batch=4",
    "model.max_length_passage=64",
]


def _source(cfg: Config, task: str) -> SourceConfig:
    """The config's first source of ``task``."""
    return next(s for s in cfg.data.sources if s.task == task)


def _replace(table: pa.Table, name: str, values: list) -> pa.Table:
    """``table`` with column ``name`` replaced by ``values``."""
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


def random_negatives(records: pa.Table, folder: str, n: int, seed: int) -> pa.Table:
    """``records`` with ``n`` random corpus documents (never a record's positive) as negatives."""
    corpus = BeirSplit(corpus=load_corpus(folder), queries={}, qrels={})
    ids = np.array(list(corpus.corpus))
    rng = np.random.default_rng(seed)
    negatives = [
        [corpus.document_text(d) for d in rng.choice(ids[~np.isin(ids, known)], n, replace=False)]
        for known in records.column("positive_ids").to_pylist()
    ]
    return _replace(records, "negatives", negatives)


def ir_records(cfg: Config, mined_dir: str) -> tuple[pa.Table, str]:
    """The IR source's records with one positive and exactly ``mining.num_negatives`` negatives, and
    where the negatives come from."""
    source, n = _source(cfg, "ir"), cfg.mining.num_negatives
    if storage.exists(storage.join(mined_dir, STATS_FILE)):
        shard = mined_shards(mined_dir)[source.name]
        records, origin = storage.read_parquet(shard), f"mined ({shard})"
    else:
        records = read_source(source, cfg.data.root).table
        records = random_negatives(records, source_path(source, cfg.data.root), n, cfg.run.seed)
        origin = f"random {source.name} corpus documents (no mine-stage output in {mined_dir})"
    records = records.filter(pc.greater_equal(pc.list_value_length(records.column("negatives")), n))
    for name, keep in (("positives", 1), ("negatives", n)):
        records = _replace(records, name, [x[:keep] for x in records.column(name).to_pylist()])
    return records, origin


def slices(records: pa.Table, batch: int, count: int, seed: int) -> list[pa.Table]:
    """``count`` batches of ``batch`` records drawn at random (seeded), as a shuffled training epoch
    forms them (a file's first rows are often alike: STS-B train opens with short captions)."""
    rows = np.random.default_rng(seed).permutation(len(records))[: batch * count]
    drawn = records.take(pa.array(rows))
    return [drawn.slice(start, batch) for start in range(0, batch * count, batch)]


def ir_batch(cfg: Config, table: pa.Table, model_path: str, st_model, pad_id: int) -> tuple:
    """IR records as ``(our batch, sentence-transformers' features, None)``; theirs has the columns
    anchor, positive, negative_1 .. negative_N."""
    m = cfg.model
    tokens = tokenize_ir(
        table,
        tokenizer_path=model_path,
        max_length_query=m.max_length_query,
        max_length_passage=m.max_length_passage,
        instruction=m.instruction_ir,
    )
    positives, negatives = (table.column(c).to_pylist() for c in ("positives", "negatives"))
    passages = [[p[0], *n] for p, n in zip(positives, negatives)]  # per query: positive, negatives
    query = st_model.preprocess(
        table.column("query").to_pylist(),
        prompt=instruction_prefix(m.instruction_ir) or None,
        max_length=m.max_length_query,
    )
    columns = [
        st_model.preprocess(list(column), max_length=m.max_length_passage)
        for column in zip(*passages)
    ]
    return collate_ir(tokens, pad_id), [query, *columns], None


def sts_batch(cfg: Config, table: pa.Table, model_path: str, st_model, pad_id: int) -> tuple:
    """STS pairs as ``(our batch, sentence-transformers' two columns, gold scores)``."""
    m = cfg.model
    tokens = tokenize_sts(
        table, tokenizer_path=model_path, max_length=m.max_length_sts, instruction=m.instruction_sts
    )
    ours = collate_sts(tokens, pad_id)
    prompt = instruction_prefix(m.instruction_sts) or None
    features = [
        st_model.preprocess(
            table.column(side).to_pylist(), prompt=prompt, max_length=m.max_length_sts
        )
        for side in ("sentence1", "sentence2")
    ]
    return ours, features, ours["score"]


def checked_work(task: str, batches) -> dict[str, float]:
    """Pairs and real tokens of one pass over ``batches``; both systems must see the same tokens."""
    pairs = tokens = 0
    for ours, features, _ in batches:
        records, ours_tokens = batch_size_and_tokens(task, ours)
        theirs_tokens, _ = token_counts(f["attention_mask"] for f in features)
        if ours_tokens != theirs_tokens:
            raise RuntimeError(f"{task}: ours encodes {ours_tokens} tokens, theirs {theirs_tokens}")
        pairs, tokens = pairs + records, tokens + ours_tokens
    return {"pairs": pairs / len(batches), "tokens": tokens / len(batches)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="reproduce", help="a preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--quick", action="store_true", help="small batches, fewer steps (< 1 min)")
    parser.add_argument("--mined", default="", help="mine-stage folder (default <run dir>/mined)")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per system and kind")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per system and kind")
    parser.add_argument("--ir-steps", type=int, default=1, help="IR steps per window")
    parser.add_argument("--sts-steps", type=int, default=3, help="STS steps per window")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches per kind (cycled)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", required=True, help="JSON file (local path or URI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sts_steps = 1
    cfg = load_config(args.config, (QUICK if args.quick else []) + args.overrides)
    t = cfg.train
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cpu")
    model_path = cfg.model.resolved_path()
    per_window = {"ir": args.ir_steps, "sts": args.sts_steps}
    systems = Systems.load(
        model_path,
        device=device,
        lr=t.lr,
        total_steps=2 * (args.warmup + args.windows * max(per_window.values())),
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        settings=LossSettings(**cfg.loss.model_dump()),
        grad_clip=t.grad_clip,
        bucket_rows=t.bucket_rows,
    )
    records, origin = ir_records(cfg, args.mined or storage.join(cfg.run.dir, "mined"))
    print(f"IR negatives: {origin}")
    tables = {
        "ir": slices(records, t.ir_global_batch, args.batches, cfg.run.seed),
        "sts": slices(
            read_source(_source(cfg, "sts"), cfg.data.root).table,
            t.sts_global_batch,
            args.batches,
            cfg.run.seed,
        ),
    }
    make = {"ir": ir_batch, "sts": sts_batch}
    pad_id = systems.ours.tokenizer.pad_token_id
    batches = {
        task: [make[task](cfg, table, model_path, systems.theirs, pad_id) for table in group]
        for task, group in tables.items()
    }
    rows, seconds = {}, {}
    for task, steps in per_window.items():
        seconds[task] = compare(
            systems.steps(task, batches[task]),
            warmup=args.warmup,
            windows=args.windows,
            per_window=steps,
        )
        work = {unit: steps * amount for unit, amount in checked_work(task, batches[task]).items()}
        for system, runs in seconds[task].items():
            rows[f"{task} {system}"] = rates(runs, work)
    ratios = {
        task: rows[f"{task} {OURS}"]["pairs/s"] / rows[f"{task} {THEIRS}"]["pairs/s"]
        for task in seconds
    }
    report = {
        "machine": machine(device),
        "config": cfg.preset,
        "quick": args.quick,
        "model": model_path,
        "global_batch": {"ir": t.ir_global_batch, "sts": t.sts_global_batch},
        "max_length": {
            "query": cfg.model.max_length_query,
            "passage": cfg.model.max_length_passage,
            "sts": cfg.model.max_length_sts,
        },
        "bucket_rows": t.bucket_rows,
        "num_negatives": cfg.mining.num_negatives,
        "negatives": origin,
        "steps_per_window": {"ir": args.ir_steps, "sts": args.sts_steps},
        "windows": args.windows,
        "window_seconds": seconds,
        "results": rows,
        "ratios": ratios,
        "ratio": min(ratios.values()),
    }
    table = markdown_table(rows, ["pairs/s", "tokens/s", "seconds"], 2, "step / system")
    table += "\n\n" + markdown_table(
        {k: {"ratio": v} for k, v in ratios.items()}, ["ratio"], 3, "pairs/s ours / theirs"
    )
    return finish(report, table, args.out)


if __name__ == "__main__":
    main()
