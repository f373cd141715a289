"""Interpolation toward the base (issue #24, lever "θ0 + λ·δ, λ < 1"): the quick demo's registered
model (fused:delta of `joint`'s two checkpoints) pulled back toward all-MiniLM-L6-v2, scored on the
dev sets (STS-B dev, the IR dev slice, TREC-QA *train* as out-of-domain retrieval dev) and, for
reporting only, on the two held-out sets. Nothing here chooses on a held-out or test split.

    PYTHONPATH=. python docs/experiments/interpolation-toward-base-2026-12-06/interpolate.py RUN_DIR OUT.json
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from pipeline.config import EvalBenchmark, load_config
from pipeline.eval.benchmarks import load_ir, run_benchmarks
from pipeline.model.encoder import Encoder
from pipeline.train.dev import evaluate_dev
from pipeline.train.driver import dev_data

LAMBDAS = (0.0, 0.5, 0.75, 1.0)
# the out-of-domain retrieval dev set: TREC-QA train (no preset trains on it; TREC-QA dev stays held out)
TRECQA_TRAIN = EvalBenchmark(
    name="trecqa-train", kind="ir", format="trecqa", path="trecqa-wang/train.csv"
)


def main(run_dir: str, out: str) -> None:
    run = Path(run_dir).resolve()
    cfg = load_config("demo", [f"run.root={run.parent}", f"run.name={run.name}"])
    dev = dev_data(cfg)
    dev.extra["dev:trecqa-train"] = load_ir(TRECQA_TRAIN, cfg.data.root, cfg.run.dir)
    held_out = [b for b in cfg.eval.benchmarks if b.held_out]
    base = load_file(str(run / "base" / "model.safetensors"))
    final = run / "final"  # the registered model: fused:delta of joint's two checkpoints
    tuned = load_file(str(final / "model.safetensors"))
    text = cfg.model.text_settings()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lam in LAMBDAS:
            folder = Path(tmp) / f"lam{lam}"
            shutil.copytree(final, folder)
            mixed = {k: base[k] + lam * (tuned[k] - base[k]) for k in tuned}
            save_file(mixed, str(folder / "model.safetensors"))
            encoder = Encoder.from_pretrained(str(folder), device="cpu")
            scores = evaluate_dev(encoder, dev, text, objective=cfg.train.objective)
            tests = run_benchmarks(
                encoder, held_out, data_root=cfg.data.root, run_dir=cfg.run.dir, text=text
            )
            scores |= {
                f"{b.name} (held out)": tests[b.name]["ndcg@10" if b.kind == "ir" else "spearman"]
                for b in held_out
            }
            rows[lam] = scores
            print(lam, json.dumps(scores), flush=True)
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
