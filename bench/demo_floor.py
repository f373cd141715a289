"""The least time a pipeline run's encoder work can take on this machine, stage by stage.

    python bench/demo_floor.py --out bench/results/demo_floor-cpu.json          # configs/demo.yaml
    python bench/demo_floor.py "train.modes=[ir_only,joint]" --out /tmp/floor.json \
        --rates-from bench/results/demo_floor-cpu.json      # another scope at the rates measured
    python bench/demo_floor.py --quick --out /tmp/floor.json                    # smoke preset, < 1 min

It counts the model FLOPs of every text each stage of ``jobs.pipeline`` puts through the encoder for
the config, from the run's own prepared and mined data (the prepare and mine stages run first, cached
as in the pipeline), and divides them by two rates measured here:

- ``peak``: a large float32 matrix product on all cores (``bench._timing.matmul_tflops``, the best
  of three windows). No code runs the encoder faster, so work / peak is a hard lower bound.
- ``encoder``: the project's own code, all cores in one process, on texts drawn from the stage's own
  (medians of ``--repeats``): ``forward_in_buckets`` forward + backward for training (Ray Train's two
  one-thread workers measured the same rate, README "Scaling") and ``Encoder.encode`` for inference.
  Passages (texts cut at ``model.max_length_passage``) and short texts (queries, STS sentences) run
  at different rates and are measured apart. Work / these rates is what a stage costs at today's
  kernels without Ray, data loading, the optimizer or uneven workers: a realistic floor.

Work (FLOPs of real tokens, ``bench.gpu_step.train_flops``; a forward pass is a third of forward +
backward; embeddings, norms and softmax are not counted), one row per stage:

- ``train <mode>``: every text of the global batches the mode's schedule uses (query, every positive
  and negative; both STS sentences), forward + backward, times the epochs (or ``train.max_steps``);
  and its dev evaluations (every ``train.eval_every`` steps and at the end).
- ``fuse``: one dev scoring (STS dev pairs, IR dev queries and pool) per fusion variant of the
  config's grid and per greedy-soup trial mixture that is not the plain soup.
- ``evaluate``: the distinct texts of every benchmark, once per model scored on test (base, every
  mode, the fused models ``eval.fused_models`` names).

Prepare, mine, register and report do no encoder work (seconds in every measured run) and are left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import matmul_tflops  # noqa: E402
from bench.gpu_step import train_flops  # noqa: E402
from jobs import mine, prepare  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.config import Config, ModelConfig, load_config  # noqa: E402
from pipeline.data.ray_datasets import count_batches  # noqa: E402
from pipeline.data.schedule import MIXED, schedule_for_run  # noqa: E402
from pipeline.eval.benchmarks import IrData, StsData, load_ir, load_sts  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.fusion.registry import get_method  # noqa: E402
from pipeline.model.buckets import forward_in_buckets  # noqa: E402
from pipeline.model.encoder import Encoder  # noqa: E402
from pipeline.model.tokenize import pad, tokenize  # noqa: E402
from pipeline.train.driver import dev_data, training_shards  # noqa: E402

QUICK = ["run.name=demo-floor-quick"]  # the smoke preset is --quick's default config
Texts = list[tuple[str, int, str]]  # (text, max length, instruction): what one encoder call embeds


# ---- what each stage encodes ----------------------------------------------------------------------


def task_texts(cfg: Config, task: str) -> Texts:
    """Every text of one epoch's records of ``task`` (all rows, before batching)."""
    m = cfg.model
    texts: Texts = []
    for path in training_shards(cfg, (task,))[task]:
        table = pq.read_table(storage.fetch(path))
        if task == "ir":
            texts += [(q, m.max_length_query, m.instruction_ir) for q in table["query"].to_pylist()]
            for column in ("positives", "negatives"):
                texts += [
                    (p, cfg.train.passage_length(m), "")
                    for passages in table[column].to_pylist()
                    for p in passages or []
                ]
        else:
            for column in ("sentence1", "sentence2"):
                texts += [
                    (s, m.max_length_sts, m.instruction_sts) for s in table[column].to_pylist()
                ]
    return texts


def _schedule(cfg: Config, mode: str):
    """(``mode``'s epoch-0 schedule, rows per task, global batch per task) for the run's data."""
    t = cfg.train
    global_batch = {"ir": t.ir_global_batch, "sts": t.sts_global_batch}
    shards = {task: paths for task, paths in training_shards(cfg, ("ir", "sts")).items() if paths}
    counted = count_batches(shards, global_batch)
    s = cfg.sampler
    schedule = schedule_for_run(
        mode,
        s.mode,
        {task: c.batches for task, c in counted.items()},
        seed=cfg.run.seed,
        ir_ratio=s.ir_ratio,
        alpha=s.alpha,
    )
    return schedule, {task: c.rows for task, c in counted.items()}, global_batch


def mode_usage(cfg: Config, mode: str) -> tuple[int, dict[str, float]]:
    """(optimizer steps of ``mode``'s run, task -> the share of an epoch's rows it trains on), over
    all its epochs and capped by ``train.max_steps``: two full epochs of a task give 2.0."""
    schedule, rows, global_batch = _schedule(cfg, mode)
    used = dict.fromkeys(schedule.num_batches, 0)
    steps = 0
    for epoch in range(cfg.train.epochs):
        for _, label in schedule.for_epoch(epoch).steps_from(0):
            if cfg.train.max_steps and steps >= cfg.train.max_steps:
                break
            for task in schedule.num_batches if label == MIXED else [label]:
                used[task] += 1
            steps += 1
    return steps, {task: n * global_batch[task] / rows[task] for task, n in used.items()}


def dev_evaluations(steps: int, eval_every: int) -> int:
    """Dev evaluations of a run of ``steps`` steps: every ``eval_every`` steps and at the last one."""
    if not eval_every:
        return 1
    return steps // eval_every + (1 if steps % eval_every else 0)


def data_texts(data: StsData | IrData, m: ModelConfig) -> Texts:
    """What scoring one loaded set encodes: both sides of every STS pair, or the IR queries and the
    documents searched (``pipeline.eval.benchmarks.score``)."""
    if isinstance(data, StsData):
        pairs = [*data.sentence1, *data.sentence2]
        return [(s, m.max_length_sts, m.instruction_sts) for s in pairs]
    queries = [(q, m.max_length_query, m.instruction_ir) for q in data.queries.values()]
    return queries + [(d, m.max_length_passage, "") for d in data.doc_texts]


def dev_texts(cfg: Config) -> Texts:
    """What one dev scoring encodes (``evaluate_dev``: every STS dev sentence, the IR dev queries and
    pool documents, the extra dev sets of the objective; no memo, as the code runs it)."""
    dev = dev_data(cfg)
    sets = [data for data in (dev.sts, dev.ir, *dev.extra.values()) if data is not None]
    return [text for data in sets for text in data_texts(data, cfg.model)]


def benchmark_texts(cfg: Config) -> Texts:
    """The distinct texts the evaluate stage encodes for one model (``EmbeddingMemo`` embeds each
    (text, max length, instruction) once across all benchmarks)."""
    texts: Texts = []
    for bench in cfg.eval.benchmarks:
        if bench.kind == "sts":
            data = load_sts(bench, cfg.data.root)
        else:
            data = load_ir(bench, cfg.data.root, cfg.run.dir)
        if data is not None:
            texts += data_texts(data, cfg.model)
    return list(dict.fromkeys(texts))


def fusion_candidates_count(cfg: Config) -> int:
    """K, the checkpoints the fuse stage merges (as ``pipeline.stages.fuse.fusion_candidates`` picks)."""
    f = cfg.fusion
    if f.candidates == "modes":
        return len(f.modes or cfg.train.modes)
    if f.candidates == "paths":
        return len(f.paths)
    if f.candidates == "top_k":
        return cfg.train.keep_top_k
    return cfg.tune.best_k


def fuse_scorings(cfg: Config) -> int:
    """Dev scorings of the fuse stage: each method's, as its spec counts them (every variant of a
    per-tensor method's grid; greedy soup's trial mixtures, less one equal to a model scored
    already). Candidates trained in the run keep the score their training recorded;
    ``fusion.paths`` folders are scored again."""
    f = cfg.fusion
    k = fusion_candidates_count(cfg)
    knobs = f.method_knobs()
    scorings = sum(get_method(m).dev_scorings(k, f.methods, knobs) for m in f.methods)
    return scorings + (k if f.candidates == "paths" else 0)


def models_scored(cfg: Config) -> int:
    """Models the evaluate stage scores: base, every mode (``eval.trained_models``), and the chosen fused model or one per
    fusion method (one whose weights equal an earlier model's, such as a greedy soup that kept one
    checkpoint, reuses its scores in the pipeline; the demo's chosen model is a new one)."""
    fused = 1 if cfg.eval.fused_models == "chosen" else len(cfg.fusion.methods)
    return 1 + (len(cfg.train.modes) if cfg.eval.trained_models else 0) + fused


# ---- FLOPs and rates ------------------------------------------------------------------------------

# Work and rates are kept apart by pass kind and text length: a forward pass over 256-token passages
# runs at a higher FLOP rate than one over 20-token sentences, so one rate for both would misstate
# the stage that is mostly one or the other.
KINDS = ("train passages", "train short texts", "encode passages", "encode short texts")


def by_kind(texts: Texts, passage_length: int, kind: str) -> dict[str, Texts]:
    """``texts`` split into ``"<kind> passages"`` (those cut at ``passage_length``, the config's
    passage max length) and ``"<kind> short texts"`` (queries, STS sentences)."""
    out: dict[str, Texts] = {f"{kind} passages": [], f"{kind} short texts": []}
    for text in texts:
        key = "passages" if text[1] == passage_length else "short texts"
        out[f"{kind} {key}"].append(text)
    return out


def lengths(tokenizer, texts: Texts) -> np.ndarray:
    """Real token lengths (special tokens included) of ``texts`` at their max lengths."""
    out = []
    groups: dict[tuple[int, str], list[str]] = {}
    for text, max_length, instruction in texts:
        groups.setdefault((max_length, instruction), []).append(text)
    for (max_length, instruction), group in groups.items():
        out += [
            len(ids) for ids in tokenize(tokenizer, group, max_length, instruction)["input_ids"]
        ]
    return np.asarray(out, dtype=np.int64)


def flops(config, tokenizer, texts: Texts, kind: str) -> float:
    """Model FLOPs of ``kind`` (``train``: forward + backward; ``encode``: forward, a third of it)
    over ``texts``."""
    total = train_flops(config, lengths(tokenizer, texts))
    return total if kind == "train" else total / 3


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call."""
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def sample(texts: Texts, n: int, seed: int) -> Texts:
    """``n`` of ``texts`` drawn without replacement (all of them when fewer)."""
    rows = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in sorted(rows)]


def encode_rate(encoder: Encoder, texts: Texts, batch_size: int, repeats: int) -> float:
    """FLOP/s of ``Encoder.encode`` (inference, length-sorted batches) on ``texts``."""
    groups: dict[tuple[int, str], list[str]] = {}
    for text, max_length, instruction in texts:
        groups.setdefault((max_length, instruction), []).append(text)

    def run() -> None:
        for (max_length, instruction), group in groups.items():
            encoder.encode(
                group, max_length=max_length, instruction=instruction, batch_size=batch_size
            )

    work = flops(encoder.backbone.config, encoder.tokenizer, texts, "encode")
    return work / median_seconds(run, repeats)


def train_rate(encoder: Encoder, texts: Texts, bucket_rows: int, repeats: int) -> float:
    """FLOP/s of one training pass (``forward_in_buckets``, then backward) over ``texts``."""
    tok = encoder.tokenizer
    ids = []
    for text, max_length, instruction in texts:
        ids += tokenize(tok, [text], max_length, instruction)["input_ids"]
    masks = {"attention_mask": [np.ones(len(s), dtype=np.int64) for s in ids]}
    features = pad([np.asarray(s) for s in ids], masks, tok.pad_token_id)
    features = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask")}
    encoder.train()

    def run() -> None:
        forward_in_buckets(encoder, features, bucket_rows).sum().backward()
        encoder.zero_grad(set_to_none=True)

    work = train_flops(encoder.backbone.config, [len(s) for s in ids])
    seconds = median_seconds(run, repeats)
    encoder.eval()
    return work / seconds


# ---- the report -----------------------------------------------------------------------------------


def stage_texts(cfg: Config) -> dict[str, list[tuple[str, float, Texts]]]:
    """Stage (``train <mode>`` for each mode, ``fuse``, ``evaluate``) -> [(kind (``KINDS``), times
    the texts go through the encoder, the texts), ...]."""
    passage = cfg.model.max_length_passage
    dev = by_kind(dev_texts(cfg), passage, "encode")
    stages = {}
    for mode in cfg.train.modes:
        steps, shares = mode_usage(cfg, mode)
        stages[f"train {mode}"] = [
            (kind, share, texts)
            for task, share in shares.items()
            for kind, texts in by_kind(
                task_texts(cfg, task), cfg.train.passage_length(cfg.model), "train"
            ).items()
        ]
        evaluations = dev_evaluations(steps, cfg.train.eval_every)
        stages[f"train {mode}"] += [(kind, evaluations, texts) for kind, texts in dev.items()]
    evaluate = by_kind(benchmark_texts(cfg), passage, "encode")
    stages["fuse"] = [(kind, fuse_scorings(cfg), texts) for kind, texts in dev.items()]
    stages["evaluate"] = [(kind, models_scored(cfg), texts) for kind, texts in evaluate.items()]
    return stages


def stage_work(cfg: Config, config, tokenizer) -> dict[str, dict[str, float]]:
    """Stage -> kind (``KINDS``) -> FLOPs (see the module docstring)."""
    work = {}
    for stage, parts in stage_texts(cfg).items():
        work[stage] = dict.fromkeys(KINDS, 0.0)
        for kind, times, texts in parts:
            work[stage][kind] += times * flops(config, tokenizer, texts, kind.split()[0])
    return work


def measured_rates(
    cfg: Config, encoder: Encoder, n_train: int, n_encode: int, repeats: int
) -> dict[str, float]:
    """Kind -> FLOP/s of the project's code on texts drawn from that kind's texts: ``n_train`` of the
    IR and STS records (in ``train.bucket_rows`` buckets, as a worker's step runs them), ``n_encode``
    of the benchmarks' (length-sorted into batches, as the evaluate stage does with a whole corpus:
    a draw of a few batches pads about as little)."""
    passage = cfg.model.max_length_passage
    pools = by_kind(
        task_texts(cfg, "ir") + task_texts(cfg, "sts"), cfg.train.passage_length(cfg.model), "train"
    )
    pools.update(by_kind(benchmark_texts(cfg), passage, "encode"))
    seed = cfg.run.seed
    rates = {}
    for kind, texts in pools.items():
        drawn = sample(texts, n_train if kind.startswith("train") else n_encode, seed)
        if kind.startswith("train"):
            rates[kind] = train_rate(encoder, drawn, cfg.train.bucket_rows, repeats)
        else:
            rates[kind] = encode_rate(encoder, drawn, cfg.eval.batch_size, repeats)
    return rates


def floor_rows(
    work: dict[str, dict[str, float]], peak: float, rates: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per stage and in all: TFLOP, minutes at the matmul peak, minutes at the encoder's rates."""
    rows = {}
    for stage, parts in work.items():
        total = sum(parts.values())
        at_rates = sum(f / rates[kind] for kind, f in parts.items() if f)
        rows[stage] = {
            "TFLOP": total / 1e12,
            "min at peak": total / peak / 60,
            "min at encoder rate": at_rates / 60,
        }
    rows["all"] = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--config", default="", help="a preset name or YAML path (default: demo)")
    parser.add_argument("--quick", action="store_true", help="the smoke preset, small samples")
    parser.add_argument("--goal-minutes", type=float, default=60.0, help="the wall-time goal")
    parser.add_argument("--sample", type=int, default=64, help="texts per training-rate sample")
    parser.add_argument(
        "--encode-sample", type=int, default=0, help="texts per encoding-rate sample (0: 8 batches)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per rate (median)")
    parser.add_argument("--matmul-n", type=int, default=2048, help="size of the peak's matmul")
    parser.add_argument(
        "--rates-from", default="", help="a report of this script: reuse its rates, measure none"
    )
    parser.add_argument("--out", required=True, help="JSON file (local path or URI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sample, args.encode_sample, args.repeats, args.matmul_n = 16, 32, 1, 256
    preset = args.config or ("smoke" if args.quick else "demo")
    cfg = load_config(preset, (QUICK if args.quick else []) + list(args.overrides))
    transformers.logging.set_verbosity_error()

    prepare.main(cfg)  # both cached by input hash, as in the pipeline
    mine.main(cfg)
    model_path = cfg.model.resolved_path()
    encoder = Encoder.from_pretrained(
        model_path, pooling=cfg.model.pooling, normalize=cfg.model.normalize, device="cpu"
    )
    work = stage_work(cfg, encoder.backbone.config, encoder.tokenizer)
    if args.rates_from:  # another scope's work at rates measured before on this machine
        measured = {
            k: v * 1e9 for k, v in storage.read_json(args.rates_from)["rates_gflops"].items()
        }
        peak = measured.pop("peak")
        rates = measured
    else:
        n_encode = args.encode_sample or 8 * cfg.eval.batch_size
        rates = measured_rates(cfg, encoder, args.sample, n_encode, args.repeats)
        # the best of three windows: the most favourable peak gives the lowest bound
        peak = max(
            matmul_tflops(torch.device("cpu"), torch.float32, args.matmul_n) for _ in range(3)
        )
        peak *= 1e12
    rows = floor_rows(work, peak, rates)
    report = {
        "config": preset,
        "overrides": list(args.overrides),
        "rates_from": args.rates_from,
        "machine": {
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "modes": cfg.train.modes,
        "models_scored": models_scored(cfg),
        "fuse_scorings": fuse_scorings(cfg),
        "work_flops": work,
        "rates_gflops": {"peak": peak / 1e9, **{k: v / 1e9 for k, v in rates.items()}},
        "stages": rows,
        "goal_minutes": args.goal_minutes,
        # the realistic floor against the goal: above 1, the goal is out of reach at today's kernels
        "ratio": rows["all"]["min at encoder rate"] / args.goal_minutes,
    }
    table = markdown_table(rows, ["TFLOP", "min at peak", "min at encoder rate"], 1, "stage")
    table += "\n\n" + markdown_table(
        {k: {"GFLOP/s": v} for k, v in report["rates_gflops"].items()}, ["GFLOP/s"], 1, "rate"
    )
    print(table)
    print(
        f"\n{report['models_scored']} models scored on test, {report['fuse_scorings']} fuse dev "
        f"scorings; floor at the encoder's rates / {args.goal_minutes:.0f}-minute goal: "
        f"{report['ratio']:.2f}"
    )
    storage.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
