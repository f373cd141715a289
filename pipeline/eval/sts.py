"""STS scoring as MTEB does it: Spearman and Pearson correlation (x100) of cosine similarity vs gold."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr


def pair_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, D] arrays (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def sts_scores(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """``{"spearman", "pearson"}`` x100 of cos(a_i, b_i) against the gold scores (ties: average ranks)."""
    cosine = pair_cosine(a, b)
    gold = np.asarray(gold, dtype=np.float64)
    return {
        "spearman": 100.0 * float(spearmanr(cosine, gold).statistic),
        "pearson": 100.0 * float(pearsonr(cosine, gold).statistic),
    }
