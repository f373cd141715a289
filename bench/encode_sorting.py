"""Encode throughput (docs/s) on the SciFact corpus with and without length-sorted batches.

    python bench/encode_sorting.py --out runs/bench/encode_sorting.json            # whole corpus
    python bench/encode_sorting.py --limit 1000 --batch-size 32 --out /tmp/es.json  # seeded sample

Prints a Markdown table (docs/s, wall time, share of padded token slots) and writes it as JSON to --out.
The two modes run interleaved ``--repeats`` times and the best run of each counts, so that load from
other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import storage  # noqa: E402
from pipeline.data.beir import load_corpus  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.model.encoder import Encoder  # noqa: E402
from pipeline.model.loading import resolve_model_path  # noqa: E402
from pipeline.model.tokenize import tokenize  # noqa: E402


def padding_share(lengths: list[int], batch_size: int, sort_by_length: bool) -> float:
    """Fraction of the padded [B, T] token slots that are padding, for the batches encode forms."""
    order = sorted(lengths, reverse=True) if sort_by_length else lengths
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    slots = sum(max(b) * len(b) for b in batches)
    return 1.0 - sum(lengths) / slots


def corpus_arguments(description: str, repeats: int, repeats_help: str) -> argparse.ArgumentParser:
    """The options of the encoding benches: model, data root, sample size, batch, length, repeats,
    output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="packaged")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument(
        "--limit", type=int, default=0, help="seeded sample of N documents (0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    parser.add_argument("--out", required=True, help="JSON file (local path or URI)")
    return parser


def corpus_texts(data_root: str, limit: int) -> list[str]:
    """SciFact documents as ``title + " " + text``; with ``limit``, a seeded sample in corpus order."""
    corpus = load_corpus(os.path.join(data_root, "scifact-beir"))
    texts = [f"{title} {text}" if title else text for title, text in corpus.values()]
    if limit:
        picked = np.random.default_rng(0).choice(len(texts), limit, replace=False)
        texts = [texts[i] for i in sorted(picked)]
    return texts


def main(argv: list[str] | None = None) -> dict:
    parser = corpus_arguments(__doc__.splitlines()[0], 2, "runs per mode (best one counts)")
    args = parser.parse_args(argv)
    texts = corpus_texts(args.data_root, args.limit)
    encoder = Encoder.from_pretrained(resolve_model_path(args.model))
    lengths = [len(ids) for ids in tokenize(encoder.tokenizer, texts, args.max_length)["input_ids"]]
    encoder.encode(texts[: args.batch_size], max_length=args.max_length)  # warm-up

    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for sort_by_length in (True, False):
            started = time.perf_counter()
            encoder.encode(
                texts,
                max_length=args.max_length,
                batch_size=args.batch_size,
                sort_by_length=sort_by_length,
            )
            times[sort_by_length].append(time.perf_counter() - started)
    rows = {
        "sorted" if sort_by_length else "unsorted": {
            "docs/s": len(texts) / min(runs),
            "seconds": min(runs),
            "padding %": 100 * padding_share(lengths, args.batch_size, sort_by_length),
        }
        for sort_by_length, runs in times.items()
    }
    speedup = rows["sorted"]["docs/s"] / rows["unsorted"]["docs/s"]
    report = {
        "docs": len(texts),
        "mean_tokens": float(np.mean(lengths)),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "device": str(encoder.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "all_seconds": {"sorted": times[True], "unsorted": times[False]},
        "results": rows,
        "speedup": speedup,
    }
    print(
        f"{len(texts)} SciFact documents (mean {report['mean_tokens']:.0f} tokens after truncation "
        f"to {args.max_length}), batch {args.batch_size}, {report['device']}, "
        f"{report['torch_threads']} threads\n"
    )
    print(markdown_table(rows, ["docs/s", "seconds", "padding %"], 1, "batches"))
    print(f"\nsorting speed-up: x{speedup:.2f}")
    storage.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
