"""Try every fusion method and knob setting, score each fused model on dev, keep the best.

    best, scores, folder = fuse_and_select(base, candidates, "runs/demo/fuse", score_fn=dev_score,
                                           methods=["delta", "soup", "greedy_soup"], delta_power=[1, 2])

The grid of each per-tensor method is its spec's (``MethodSpec.variants``: every combination of its
grid knobs' values); a search method (greedy soup) runs its own search. ``score_fn`` must be a dev
scorer (e.g. the mean of STS-B dev Spearman and the IR dev slice's nDCG@10): the choice is made on it
alone, so test benchmarks stay held out. Layout of ``out_dir``:

    <method>/          the best variant of each method (what a report evaluates on test)
    selection.json     {"best", "scores" (every variant), "folders" (per method), "candidate_scores",
                        "refused" (variant -> why: a fused tensor with NaN/inf)}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.fusion import registry
from pipeline.fusion.spec import ScoreFn
from pipeline.fusion.stream import NonFiniteWeights, fuse, weights_digest


def variant_name(method: str, knobs: dict[str, object]) -> str:
    """``delta(power=2.0, granularity=element, normalize=tensor)``; a method without knobs: its name."""
    if not knobs:
        return method
    return f"{method}({', '.join(f'{k}={v}' for k, v in knobs.items())})"


class ScoreMemo:
    """``score_fn`` called once per distinct set of weights (by ``weights_digest``), seeded with
    scores already known, e.g. the dev objective training recorded for its best checkpoint."""

    def __init__(self, score_fn: ScoreFn, known: Mapping[str, float] | None = None) -> None:
        self.score_fn = score_fn
        self.scores = {weights_digest(folder): float(s) for folder, s in (known or {}).items()}

    def __call__(self, folder: str) -> float:
        digest = weights_digest(folder)
        if digest not in self.scores:
            self.scores[digest] = self.score_fn(folder)
        return self.scores[digest]


def _replace(src: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    src.rename(dest)


def _refuse(name: str, exc: NonFiniteWeights) -> str:
    print(f"[fusion] {name} refused: {exc}")
    return str(exc)


def fuse_and_select(
    base: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    score_fn: ScoreFn,
    methods: Sequence[str] | None = None,
    known_scores: Mapping[str, float] | None = None,
    **knobs: object,
) -> tuple[str, dict[str, float], str]:
    """Fuse with every method × knob setting, score each on dev, return the best.

    The keyword arguments are ``FusionConfig``'s fields, so a job can pass
    ``**cfg.fusion.method_knobs()``.

    Args:
        base: the pre-trained folder θ_0.
        candidates: the K fine-tuned checkpoint folders.
        out_dir: receives one folder per method (its best variant) and ``selection.json``.
        score_fn: ``folder -> dev score`` (higher is better); a dev scorer only, never test data.
        methods: registered names (``registry.METHODS``); None: all of them, in registry order.
        known_scores: dev scores already measured, by folder (the candidates' from training); a
            model whose weights equal a scored one is never scored again.
        knobs: the methods' knob fields, e.g. ``delta_power=[1, 2]``, ``ta_lambda=[0.5]``,
            ``ties_density=0.2`` (each method file's ``SPEC.knobs``); one left out: its default.

    Returns:
        (best variant name, e.g. "delta(power=2.0, ...)", {variant name: dev score} for every variant
        tried, the best variant's folder ``out_dir/<method>``).
    """
    methods = list(registry.METHODS) if methods is None else methods
    if not methods:
        raise ValueError("fusion.methods is empty: name at least one method")
    unknown = sorted(set(knobs) - set(registry.knobs()))
    if unknown:
        raise TypeError(f"unknown fusion knobs {unknown}; known: {sorted(registry.knobs())}")
    specs = [registry.get_method(method) for method in methods]  # an unknown name before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    folders: dict[str, str] = {}
    method_of: dict[str, str] = {}
    score_fn = ScoreMemo(score_fn, known_scores)
    candidate_scores = {str(c): score_fn(str(c)) for c in candidates}
    refused: dict[str, str] = {}
    for spec in specs:
        method, folder = spec.name, out / spec.name
        if spec.search is not None:
            try:
                result = spec.search(
                    base, candidates, folder, score_fn, candidate_scores=candidate_scores
                )
            except NonFiniteWeights as exc:
                refused[method] = _refuse(method, exc)
                continue
            scores[method], folders[method], method_of[method] = result.score, result.folder, method
            continue
        best_here = float("-inf")
        for setting in spec.variants(knobs):
            name = variant_name(method, setting)
            try:
                trial = Path(fuse(base, candidates, out / ".trial", method, **setting))
            except NonFiniteWeights as exc:
                refused[name] = _refuse(name, exc)
                continue
            scores[name], method_of[name] = score_fn(str(trial)), method
            if scores[name] > best_here:
                best_here = scores[name]
                _replace(trial, folder)
                folders[method] = str(folder)
            else:
                shutil.rmtree(trial)
    if not scores:
        raise NonFiniteWeights(f"every fusion variant has NaN/inf weights: {refused}")
    best = max(scores, key=lambda name: scores[name])  # first of equals, in method order
    summary = {
        "best": best,
        "scores": scores,
        "folders": folders,
        "candidate_scores": candidate_scores,
        "refused": refused,
    }
    (out / "selection.json").write_text(json.dumps(summary, indent=2) + "\n")
    return best, scores, folders[method_of[best]]
