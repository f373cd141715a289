"""Per-task fusion weights (issue #24, item 2): θ = θ_0 + w_ir · δ_ir_only + w_joint · δ_joint over the
full comparison's two fused checkpoints, on a grid of weights, each scored on dev with the fuse stage's
own scorer (STS-B dev, the IR dev slice, TREC-QA train nDCG@10 / MAP / MRR@10). Task arithmetic is
the diagonal (w_ir = w_joint = λ), the soup (0.5, 0.5). Chooses nothing on test or held-out data.

The weighted sum is registered here as a fusion plug-in (``pipeline.fusion.registry.register``), so
the models are written by the project's streaming writer. With ``references`` it scores instead the
run's registered model (``final/``) and its two candidates on the same objective.

    PYTHONPATH=. python docs/experiments/per-task-fusion-weights-2026-12-06/weighted_sum.py <reproduce run dir> out.json [references]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import load_config
from pipeline.fusion import fuse
from pipeline.fusion.registry import register
from pipeline.fusion.spec import MethodSpec
from pipeline.stages import fuse as fuse_stage

GRID = [(w_ir, w_joint) for w_ir in (0.25, 0.5, 1.0) for w_joint in (0.5, 0.75, 1.0)]
# the demo's metric-split objective: STS-B dev 3, IR dev 3, TREC-QA train nDCG@10, MAP, MRR@10 1 each
OBJECTIVE = {
    "dev_sts_spearman": 3.0,
    "dev_ir_ndcg@10": 3.0,
    "dev:trecqa-train": 1.0,
    "dev:trecqa-train:map": 1.0,
    "dev:trecqa-train:mrr@10": 1.0,
}


def weighted_sum(base, deltas, *, weights=(1.0,)):
    """θ_0 + Σ_k w_k δ_k (one weight per candidate, in candidate order)."""
    if len(weights) != len(deltas):
        raise ValueError(f"{len(weights)} weights for {len(deltas)} candidates")
    fused = base.clone()
    for w, d in zip(weights, deltas):
        fused += w * d
    return fused


def thirds(scores: dict[str, float]) -> float:
    """The reproduce preset's objective: STS-B dev, IR dev, TREC-QA train nDCG@10 in thirds."""
    return (scores["dev_sts_spearman"] + scores["dev_ir_ndcg@10"] + scores["dev:trecqa-train"]) / 3


def main(run_dir: str, out: str, part: str = "grid") -> None:
    register(MethodSpec(name="weighted_sum", fn=weighted_sum))
    run = Path(run_dir).resolve()
    cfg = load_config(
        "reproduce",
        [
            f"run.root={run.parent}",
            f"run.name={run.name}",
            f"train.objective={json.dumps(OBJECTIVE)}",
        ],
    )
    candidates = [run / "train" / "ir_only" / "best", run / "train" / "joint" / "best"]
    evaluate = fuse_stage.dev_evaluator(cfg)  # dev data loaded once
    rows = {}
    for label, folder in models(run, candidates, part):
        scores = evaluate(str(folder))
        rows[label] = scores | {"thirds": thirds(scores)}
        print(label, {k: round(v, 2) for k, v in rows[label].items()}, flush=True)
    Path(out).write_text(json.dumps({"objective": OBJECTIVE, "scores": rows}, indent=1))


def models(run: Path, candidates: list[Path], part: str) -> Iterator[tuple[str, Path]]:
    """(label, folder) to score: the grid's weighted sums, each fused before and deleted after it is
    scored, or the references (registered model, candidates)."""
    if part == "references":
        for folder in (run / "final", *candidates):
            yield str(folder.relative_to(run)), folder
        return
    with tempfile.TemporaryDirectory() as tmp:
        for w_ir, w_joint in GRID:
            folder = Path(tmp) / f"w{w_ir}-{w_joint}"
            fuse(run / "base", candidates, folder, "weighted_sum", weights=(w_ir, w_joint))
            yield f"{w_ir},{w_joint}", folder
            shutil.rmtree(folder)


if __name__ == "__main__":
    main(*sys.argv[1:])
