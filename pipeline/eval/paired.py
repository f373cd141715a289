"""Is a difference between two models on the same queries more than noise? A paired comparison of
per-query scores: the mean difference, its 95% BCa bootstrap interval and a two-sided sign-flip
permutation test (both from ``scipy.stats``), with the queries won, lost and tied."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Model a − model b over the same queries, in the scores' own units."""

    mean: float
    low: float  # 95% interval of the mean
    high: float
    p: float  # two-sided, sign-flip permutation test of "no difference"
    won: int  # queries where a scores higher
    lost: int
    tied: int


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> PairedDifference:
    """Paired test of ``a[i] − b[i]`` (the same queries in the same order, at least two)."""
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diffs.ndim != 1 or len(diffs) < 2:
        raise ValueError(
            f"a paired test needs two equal-length score lists of 2+ queries, got {diffs.shape}"
        )
    mean = float(diffs.mean())
    if np.ptp(diffs) == 0:  # every query moved alike: the bootstrap has nothing to resample
        low = high = mean
    else:
        low, high = stats.bootstrap(
            (diffs,), np.mean, n_resamples=resamples, method="BCa", random_state=seed
        ).confidence_interval
    p = stats.permutation_test(
        (diffs,), np.mean, permutation_type="samples", n_resamples=resamples, random_state=seed
    ).pvalue
    return PairedDifference(
        mean=mean,
        low=float(low),
        high=float(high),
        p=float(p),
        won=int((diffs > 0).sum()),
        lost=int((diffs < 0).sum()),
        tied=int((diffs == 0).sum()),
    )
