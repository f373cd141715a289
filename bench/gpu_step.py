"""One training step on one device, this project's against sentence-transformers', with MFU.

    python bench/gpu_step.py --out runs/bench/gpu_step.json                        # one CUDA device
    python bench/gpu_step.py --device cpu --quick --out /tmp/gpu_step.json         # tiny shapes, CPU

Plain torch: no Ray, MLflow or pyarrow anywhere in the import chain (the GPU machine has no Ray,
MLflow or pydantic, so ``pipeline.config`` is not imported either). For each model shape (all-MiniLM-L6-v2's
and BERT-base's, random weights from a ``BertConfig``, SDPA attention) and each step kind it times:

- ``ours``: ``pipeline.train.step.train_step`` (bf16 autocast on CUDA), AdamW and the linear schedule
  of ``pipeline.train.optim``;
- ``sentence-transformers``: ``SentenceTransformer`` loaded from the same weights, its loss
  (``MultipleNegativesRankingLoss`` for IR, ``CoSENTLoss`` for STS) forward under the same autocast,
  backward, gradient clipping at 1.0, then the optimizer and schedule that
  ``SentenceTransformerTrainingArguments``' defaults select (what ``SentenceTransformerTrainer`` runs
  each step; the trainer object itself is not built: it needs ``accelerate`` and a dataset).

Batches are random token ids: IR is 64 queries with 8 passages each (1 positive + 7 hard negatives),
every text 64-256 tokens; STS is 128 pairs of 8-32 tokens. Each system gets the batch as it would
pad it (ours: positives together, negatives together; sentence-transformers: one padded tensor per
column), so both encode the same real tokens.

Model FLOPs count real (non-pad) tokens only, for forward + backward::

    N     = layers * (4 h^2 + 2 h i)                  weights that enter a matrix product, per token
    FLOPs = 6 N T  +  12 layers h sum_s L_s^2         T real tokens; L_s the real length of text s

(``6 N T``: 2 FLOPs per multiply-add, forward once and backward twice; attention ``Q K^T`` and ``A V``
are 2 L^2 h each forward, x3 with backward). Embeddings, layer norms, softmax and biases are not
counted. MFU = FLOPs / step time / the device's matrix-product rate, measured here with a large
``torch.matmul`` in the step's compute dtype (bf16 on CUDA, float32 on CPU).

Padding: ours runs each encoder pass as length-sorted buckets of ``--bucket-rows`` rows, each trimmed
to its longest row (``pipeline.model.buckets``; 0 = one dynamically padded pass, as
sentence-transformers does). Not implemented: varlen attention, compiled kernels, CUDA graphs. The
interleaved timing, the matrix-product rate and the report come from ``bench/_timing.py``;
sentence-transformers 3.x to 6.x are supported (its losses moved to
``sentence_transformers.sentence_transformer.losses`` in 6).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import (  # noqa: E402
    OURS,
    THEIRS,
    compare,
    finish,
    machine,
    matmul_tflops,
    no_sync,
    rates,
)
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.model.encoder import Encoder  # noqa: E402
from pipeline.model.save import save_pretrained_st  # noqa: E402
from pipeline.model.tokenize import pad  # noqa: E402
from pipeline.train.optim import build_optimizer, build_scheduler  # noqa: E402
from pipeline.train.step import LossSettings, train_step  # noqa: E402

SHAPES = {  # BertConfig fields of each model shape
    "minilm-l6": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}
QUICK_SHAPES = {
    "minilm-l6": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
    },
    "bert-base": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 512,
    },
}


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """``rows`` queries (IR) or pairs (STS); ``passages`` per query (IR only); text lengths in
    ``[min_len, max_len]`` tokens, uniform."""

    rows: int
    min_len: int
    max_len: int
    passages: int = 0


BATCHES = {
    "ir": BatchShape(rows=64, passages=8, min_len=64, max_len=256),
    "sts": BatchShape(rows=128, min_len=8, max_len=32),
}
QUICK_BATCHES = {
    "ir": BatchShape(rows=4, passages=3, min_len=16, max_len=48),
    "sts": BatchShape(rows=8, min_len=4, max_len=12),
}


# ---- sentence-transformers' training step ---------------------------------------------------------


def st_trainer_defaults(lr: float) -> tuple[type, dict, str]:
    """(optimizer class, its keyword arguments, scheduler name) that ``SentenceTransformerTrainer``
    uses with default arguments and learning rate ``lr``, through transformers' own
    ``Trainer.get_optimizer_cls_and_kwargs`` (the arguments object is built from the dataclass
    defaults: instantiating it needs ``accelerate``)."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from transformers import Trainer

    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(SentenceTransformerTrainingArguments)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    args = types.SimpleNamespace(**{**defaults, "learning_rate": lr})
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return optimizer_cls, kwargs, str(args.lr_scheduler_type)


def st_optimizer(model: torch.nn.Module, lr: float, total_steps: int):
    """``(optimizer, scheduler)`` as ``SentenceTransformerTrainer`` builds them (no warm-up)."""
    from transformers import get_scheduler

    optimizer_cls, kwargs, schedule = st_trainer_defaults(lr)
    optimizer = optimizer_cls([p for p in model.parameters() if p.requires_grad], **kwargs)
    return optimizer, get_scheduler(schedule, optimizer, 0, total_steps)


def st_train_step(
    model,
    loss,
    optimizer,
    scheduler,
    features: list[dict[str, torch.Tensor]],
    labels: torch.Tensor | None,
    *,
    device: torch.device,
    grad_clip: float = 1.0,
    bf16: bool = False,
) -> None:
    """sentence-transformers' step: inputs to the device, ``loss(features, labels)`` (model forward
    inside, under bf16 autocast on CUDA), backward, clip, optimizer and scheduler step, zero grads.
    Like the trainer, it reads nothing back from the device (no per-step synchronisation)."""
    model.train()
    features = [  # as the trainer's _prepare_inputs: tensors moved, other entries kept
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in f.items()}
        for f in features
    ]
    labels = None if labels is None else labels.to(device)
    autocast = bf16 and device.type == "cuda"
    with (
        torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    ):
        value = loss(features, labels)
    value.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@dataclasses.dataclass
class Systems:
    """Both trainers on the same weights, each with its own optimizer: ours (``Encoder``, AdamW and
    the linear schedule of ``pipeline.train.optim``, ``train_step``) and sentence-transformers'
    (``SentenceTransformer``, the trainer's default optimizer and schedule, MNRL for IR, CoSENT for
    STS, ``st_train_step``)."""

    ours: Encoder
    our_optimizer: torch.optim.Optimizer
    our_scheduler: object
    theirs: torch.nn.Module
    their_optimizer: torch.optim.Optimizer
    their_scheduler: object
    losses: dict[str, torch.nn.Module]
    device: torch.device
    settings: LossSettings = dataclasses.field(default_factory=LossSettings)
    grad_clip: float = 1.0
    bf16: bool = False
    bucket_rows: int = 16  # ours: rows per length bucket of an encoder pass (0: one padded pass)

    @classmethod
    def load(
        cls,
        folder: str,
        *,
        device: torch.device,
        lr: float,
        total_steps: int,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        **options,
    ) -> Systems:
        """Load ``folder`` (a sentence-transformers folder) into both; ``options``: the remaining
        fields (``settings``, ``grad_clip``, ``bf16``, ``bucket_rows``)."""
        from sentence_transformers import SentenceTransformer

        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.losses import (
                CoSENTLoss,
                MultipleNegativesRankingLoss,
            )
        except ImportError:  # 3.x to 5.x
            from sentence_transformers.losses import CoSENTLoss, MultipleNegativesRankingLoss

        ours = Encoder.from_pretrained(folder, device=device)
        optimizer = build_optimizer(ours, lr=lr, weight_decay=weight_decay)
        theirs = SentenceTransformer(folder, device=str(device))
        return cls(
            ours,
            optimizer,
            build_scheduler(optimizer, total_steps=total_steps, warmup_ratio=warmup_ratio),
            theirs,
            *st_optimizer(theirs, lr, total_steps),
            {"ir": MultipleNegativesRankingLoss(theirs), "sts": CoSENTLoss(theirs)},
            device,
            **options,
        )

    def step(self, system: str, task: str, batches: Iterator[tuple]) -> None:
        """One training step of ``system`` on the next ``(our batch, their features, labels)``."""
        batch, features, labels = next(batches)
        if system == OURS:
            train_step(
                self.ours,
                self.our_optimizer,
                self.our_scheduler,
                task,
                batch,
                settings=self.settings,
                grad_clip=self.grad_clip,
                device=self.device,
                dim=self.ours.dim,
                bf16=self.bf16,
                bucket_rows=self.bucket_rows,
            )
        else:
            st_train_step(
                self.theirs,
                self.losses[task],
                self.their_optimizer,
                self.their_scheduler,
                features,
                labels,
                device=self.device,
                grad_clip=self.grad_clip,
                bf16=self.bf16,
            )

    def steps(self, task: str, batches: Sequence[tuple]) -> dict[str, Callable[[], None]]:
        """A step function per system, each cycling through ``batches`` on its own."""
        return {
            system: functools.partial(self.step, system, task, itertools.cycle(batches))
            for system in (OURS, THEIRS)
        }


# ---- FLOPs and token accounting -------------------------------------------------------------------


def matmul_params(config) -> int:
    """Weights per layer that multiply every token (Q, K, V, attention output: 4 h^2; FFN: 2 h i),
    times the layers (a ``BertConfig``'s shape)."""
    h, i = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * h * h + 2 * h * i)


def train_flops(config, lengths: Iterable[int]) -> float:
    """Forward + backward FLOPs of encoding texts of the given real lengths (see the module doc)."""
    lengths = np.asarray(list(lengths), dtype=np.float64)
    dense = 6 * matmul_params(config) * lengths.sum()
    attention = 12 * config.num_hidden_layers * config.hidden_size * (lengths**2).sum()
    return float(dense + attention)


def token_counts(masks: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(real tokens, token slots) over the padded ``[rows, L]`` attention masks one step encodes."""
    masks = list(masks)
    return int(sum(int(m.sum()) for m in masks)), int(sum(m.numel() for m in masks))


def real_lengths(masks: Iterable[torch.Tensor]) -> list[int]:
    """The real length of every encoded text."""
    return [int(n) for m in masks for n in m.sum(dim=1)]


def our_masks(task: str, batch: dict) -> list[torch.Tensor]:
    """The attention masks ``train_step`` encodes (IR: only the real passage slots)."""
    if task == "ir":
        return [
            batch["query"]["attention_mask"],
            batch["positives"]["attention_mask"][batch["positive_mask"]],
            batch["negatives"]["attention_mask"][batch["negative_mask"]],
        ]
    return [batch["sentence1"]["attention_mask"], batch["sentence2"]["attention_mask"]]


# ---- synthetic batches ----------------------------------------------------------------------------


def _padded(sequences: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [rows, longest], right-padded with 0."""
    return pad(sequences, {"attention_mask": [np.ones(len(s), dtype=np.int64) for s in sequences]})


def _nested(
    sequences: Sequence[np.ndarray], rows: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``rows`` equal groups of texts -> ([rows, K, L] tensors, all-real slot mask [rows, K])."""
    flat = _padded(sequences)
    nested = {k: v.view(rows, -1, v.shape[-1]) for k, v in flat.items()}
    return nested, torch.ones(nested["input_ids"].shape[:2], dtype=torch.bool)


def random_texts(
    rng: np.random.Generator, n: int, shape: BatchShape, vocab: int
) -> list[np.ndarray]:
    """``n`` random token-id sequences with lengths uniform in the shape's range."""
    lengths = rng.integers(shape.min_len, shape.max_len + 1, size=n)
    return [rng.integers(1000, vocab, size=length) for length in lengths]


def ir_batches(rng, shape: BatchShape, vocab: int) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """One IR batch in both layouts: ours (``collate_ir``'s keys) and sentence-transformers'
    columns (anchor, positive, negative_1 .. negative_{K-1})."""
    queries = random_texts(rng, shape.rows, shape, vocab)
    passages = random_texts(rng, shape.rows * shape.passages, shape, vocab)  # query-major
    k = shape.passages
    positives, positive_mask = _nested(passages[::k], shape.rows)
    negatives, negative_mask = _nested(
        [p for q in range(shape.rows) for p in passages[q * k + 1 : (q + 1) * k]], shape.rows
    )
    ours = {
        "query": _padded(queries),
        "positives": positives,
        "positive_mask": positive_mask,
        "negatives": negatives,
        "negative_mask": negative_mask,
        "ids": list(range(shape.rows)),
    }
    theirs = [_padded(queries)] + [_padded(passages[j::k]) for j in range(k)]
    return ours, theirs


def sts_batches(rng, shape: BatchShape, vocab: int) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """One STS batch in both layouts (``collate_sts``'s keys; two columns plus float labels)."""
    first = random_texts(rng, shape.rows, shape, vocab)
    second = random_texts(rng, shape.rows, shape, vocab)
    score = torch.as_tensor(rng.random(shape.rows), dtype=torch.float32)
    ours = {
        "sentence1": _padded(first),
        "sentence2": _padded(second),
        "score": score,
        "ids": list(range(shape.rows)),
    }
    return ours, [_padded(first), _padded(second)]


# ---- models ---------------------------------------------------------------------------------------


def write_random_model(fields: Mapping[str, int], folder: Path, seed: int = 0) -> str:
    """A random-weight BERT encoder of the given shape (mean pooling, L2-normalised) written as a
    sentence-transformers folder, so both systems load the same weights. The tokenizer is a
    placeholder five-token vocabulary: the steps are fed token ids."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, max_position_embeddings=512, attn_implementation="sdpa", **fields
    )
    backbone = BertModel(config, add_pooling_layer=False)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    return save_pretrained_st(Encoder(backbone, tokenizer, max_seq_length=512), folder)


def measure_shape(
    name: str, folder: str, batches: Mapping[str, BatchShape], args, device, peak: float
) -> dict[str, dict]:
    """Rows ``"<shape> <task> <system>"`` (step time, tokens/s, padding, TFLOP/s, MFU) of one shape."""
    per_window = {"ir": args.ir_steps, "sts": args.sts_steps}
    total = 2 * (args.warmup + args.windows * max(per_window.values()))
    systems = Systems.load(
        folder,
        device=device,
        lr=args.lr,
        total_steps=total,
        bf16=device.type == "cuda",
        bucket_rows=args.bucket_rows,
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else no_sync
    rng = np.random.default_rng(args.seed)
    rows = {}
    for task, make in (("ir", ir_batches), ("sts", sts_batches)):
        our_batch, features = make(rng, batches[task], systems.ours.backbone.config.vocab_size)
        labels = our_batch["score"] if task == "sts" else None
        seconds = compare(
            systems.steps(task, [(our_batch, features, labels)]),
            warmup=args.warmup,
            windows=args.windows,
            per_window=per_window[task],
            sync=sync,
        )
        masks = {OURS: our_masks(task, our_batch), THEIRS: [f["attention_mask"] for f in features]}
        for system, runs in seconds.items():
            real, slots = token_counts(masks[system])
            flops = train_flops(systems.ours.backbone.config, real_lengths(masks[system]))
            steps = [s / per_window[task] for s in runs]
            row = rates(steps, {"tokens": real, "TFLOP": flops / 1e12})
            rows[f"{name} {task} {system}"] = {
                "step ms": 1000 * row["seconds"],
                "real tokens/s": row["tokens/s"],
                "padding %": 100 * (1 - real / slots),
                "TFLOP/s": row["TFLOP/s"],
                "MFU %": 100 * row["TFLOP/s"] / peak,
                "step seconds": steps,
            }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and batches, few steps")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--windows", type=int, default=5, help="timed windows per system")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per system first")
    parser.add_argument("--ir-steps", type=int, default=3, help="IR steps per window")
    parser.add_argument("--sts-steps", type=int, default=10, help="STS steps per window")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument(
        "--bucket-rows", type=int, default=16, help="ours: rows per length bucket (0: padded pass)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-n", type=int, default=0, help="size of the peak-rate product")
    parser.add_argument("--out", required=True, help="JSON file (a URI needs pyarrow)")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.ir_steps, args.sts_steps = 1, 1, 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (with --quick for tiny shapes)")

    import transformers

    transformers.logging.set_verbosity_error()
    shapes, batches = (QUICK_SHAPES, QUICK_BATCHES) if args.quick else (SHAPES, BATCHES)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = args.matmul_n or (8192 if device.type == "cuda" else (512 if args.quick else 2048))
    peak = matmul_tflops(device, dtype, n)
    print(f"{device}: measured {peak:.3g} TFLOP/s ({dtype}, {n}^3 matmul)")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            folder = write_random_model(shapes[name], Path(tmp) / name, args.seed)
            rows.update(measure_shape(name, folder, batches, args, device, peak))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    ratios = {
        f"{name} {task}": rows[f"{name} {task} {OURS}"]["real tokens/s"]
        / rows[f"{name} {task} {THEIRS}"]["real tokens/s"]
        for name in args.shapes
        for task in ("ir", "sts")
    }
    report = {
        "machine": machine(device),
        "quick": args.quick,
        "shapes": {name: shapes[name] for name in args.shapes},
        "batches": {task: dataclasses.asdict(b) for task, b in batches.items()},
        "steps_per_window": {"ir": args.ir_steps, "sts": args.sts_steps},
        "windows": args.windows,
        "peak_tflops": peak,
        "peak_dtype": str(dtype),
        "flops": "6 * layers * (4 h^2 + 2 h i) * real_tokens + 12 * layers * h * sum(real_len^2)",
        "padding_free": "not implemented (dynamic padding only)",
        "results": rows,
        "ratios": ratios,
        "ratio": min(ratios.values()),
    }
    columns = ["step ms", "real tokens/s", "padding %", "TFLOP/s", "MFU %"]
    table = markdown_table(rows, columns, 2, "shape / step / system")
    table += "\n\n" + markdown_table(
        {k: {"ratio": v} for k, v in ratios.items()}, ["ratio"], 3, "real tokens/s ours / theirs"
    )
    return finish(report, table, args.out)


if __name__ == "__main__":
    main()
