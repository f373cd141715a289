"""Encoding throughput (docs/s) on the SciFact corpus: ``Encoder.encode`` against
``SentenceTransformer.encode``, same model, batch size and max length.

    python bench/encode_throughput.py --out bench/results/encode_throughput-cpu.json    # whole corpus
    python bench/encode_throughput.py --limit 500 --out /tmp/et.json                     # seeded sample
    python bench/encode_throughput.py --quick --out /tmp/et.json                         # < 1 minute

Documents are ``title + " " + text`` (the seeded sample of ``bench/encode_sorting.py`` under
``--limit``). Ours encodes with its length-sorted batches (tokenising the whole list first);
sentence-transformers sorts by character length and tokenises batch by batch; both times include
tokenisation. After one untimed batch each, ``--repeats`` full passes per system run interleaved
(ours, theirs, ours, ...); medians are reported and ``ratio`` is ours / theirs docs/s. The two
outputs are compared as a check that both ran the same model.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import OURS, THEIRS, compare, finish, machine, rates  # noqa: E402
from bench.encode_sorting import corpus_arguments, corpus_texts, padding_share  # noqa: E402
from pipeline.eval.table import markdown_table  # noqa: E402
from pipeline.model.encoder import Encoder  # noqa: E402
from pipeline.model.loading import resolve_model_path  # noqa: E402
from pipeline.model.tokenize import tokenize  # noqa: E402


def st_order(texts: list[str], lengths: list[int]) -> list[int]:
    """Token lengths in the order ``SentenceTransformer.encode`` batches them (longest text first,
    by characters)."""
    return [lengths[i] for i in np.argsort([-len(t) for t in texts], kind="stable")]


def main(argv: list[str] | None = None) -> dict:
    parser = corpus_arguments(__doc__.splitlines()[0], 5, "timed passes per system")
    parser.add_argument("--quick", action="store_true", help="32 documents (< 1 minute)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = 32
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    texts = corpus_texts(args.data_root, args.limit)
    path = resolve_model_path(args.model)
    ours = Encoder.from_pretrained(path, device="cpu")
    theirs = SentenceTransformer(path, device="cpu")
    theirs.max_seq_length = args.max_length
    lengths = [len(ids) for ids in tokenize(ours.tokenizer, texts, args.max_length)["input_ids"]]
    encode = {
        OURS: functools.partial(
            ours.encode, max_length=args.max_length, batch_size=args.batch_size
        ),
        THEIRS: functools.partial(
            theirs.encode, batch_size=args.batch_size, show_progress_bar=False
        ),
    }
    outputs = {system: fn(texts[: args.batch_size]) for system, fn in encode.items()}  # warm-up
    difference = float(np.abs(outputs[OURS] - outputs[THEIRS]).max())
    seconds = compare(
        {system: functools.partial(fn, texts) for system, fn in encode.items()},
        warmup=0,
        windows=args.repeats,
    )
    work = {"docs": len(texts), "tokens": sum(lengths)}
    rows = {system: rates(runs, work) for system, runs in seconds.items()}
    rows[OURS]["padding %"] = 100 * padding_share(lengths, args.batch_size, sort_by_length=True)
    rows[THEIRS]["padding %"] = 100 * padding_share(
        st_order(texts, lengths), args.batch_size, sort_by_length=False
    )
    ratio = rows[OURS]["docs/s"] / rows[THEIRS]["docs/s"]
    report = {
        "machine": machine(torch.device("cpu")),
        "model": path,
        "docs": len(texts),
        "mean_tokens": float(np.mean(lengths)),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "max_abs_difference": difference,
        "window_seconds": seconds,
        "results": rows,
        "ratio": ratio,
    }
    print(
        f"{len(texts)} SciFact documents (mean {report['mean_tokens']:.0f} tokens after truncation "
        f"to {args.max_length}), batch {args.batch_size}; largest embedding difference "
        f"ours vs theirs {difference:.2e}\n"
    )
    table = markdown_table(rows, ["docs/s", "tokens/s", "seconds", "padding %"], 2, "encoder")
    return finish(report, table, args.out)


if __name__ == "__main__":
    main()
