"""Greedy soup (Wortsman et al., 2022): rank the candidates by their own dev score, then walk down the
list and keep a candidate in the soup only if the soup's dev score goes up.

    S = [c_1] (the best single candidate); for c in c_2..c_K: S ← S + [c] if dev(soup(S + [c])) > dev(soup(S))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.fusion.spec import MethodSpec, ScoreFn


@dataclass(frozen=True)
class GreedySoup:
    """The chosen soup: its folder, its members in the order added, and its dev score."""

    folder: str
    members: list[str]
    score: float


def greedy_soup(
    base: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    score_fn: ScoreFn,
    *,
    candidate_scores: Mapping[str, float] | None = None,
) -> GreedySoup:
    """Build the greedy soup in ``out_dir`` (a soup of one is the best candidate's weights).

    Args:
        base: θ_0 (the soup is computed as θ_0 + mean δ_k; its non-weight files are copied).
        candidates: the K checkpoint folders.
        out_dir: where the chosen soup is written.
        score_fn: a dev scorer, ``folder -> float`` (higher is better); it must never see test data.
        candidate_scores: dev scores of the candidates already computed (keyed by ``str(folder)``).
    """
    from pipeline.fusion.stream import fuse  # torch: not loaded when the config reads SPEC

    paths = [str(c) for c in candidates]
    scores = dict(candidate_scores or {})
    for path in paths:
        if path not in scores:
            scores[path] = score_fn(path)
    ranked = sorted(paths, key=lambda p: -scores[p])  # stable: input order breaks ties
    out = Path(out_dir)
    members, best = [ranked[0]], scores[ranked[0]]
    # a soup of one is that candidate, bit for bit (θ_0 + δ would round it): fused from itself
    fuse(ranked[0], members, out, "soup")
    trial = out.with_name(f".{out.name}.trial")
    for path in ranked[1:]:
        fuse(base, [*members, path], trial, "soup")
        score = score_fn(str(trial))
        if score > best:
            members, best = [*members, path], score
            shutil.rmtree(out)
            trial.rename(out)
        else:
            shutil.rmtree(trial)
    return GreedySoup(folder=str(out), members=members, score=best)


def trial_scorings(k: int, methods: Sequence[str]) -> int:
    """Dev scorings of greedy soup's trial mixtures with ``k`` candidates (scored beside the
    candidates' own): one per candidate after the first, less the mixture of two when ``soup`` is
    also tried (the same weights, scored once)."""
    return max(k - 1, 0) - (1 if k == 2 and "soup" in methods else 0)


SPEC = MethodSpec(name="greedy_soup", search=greedy_soup, search_scorings=trial_scorings)
