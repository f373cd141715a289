"""Embedding geometry (raw values, not x100).

- alignment (Wang & Isola 2020): E ||f(x) - f(y)||^2 over positive pairs of unit vectors (lower: closer).
- uniformity (Wang & Isola 2020): log E exp(-2 ||f(x) - f(y)||^2) over all distinct pairs (lower: more
  uniform on the sphere).
- avg_cosine: mean cosine over distinct pairs (anisotropy; near 0 is isotropic).
- svd_entropy: Shannon entropy of the normalised singular values p_i = s_i / sum(s) of the [N, D] matrix;
  effective_rank = exp(svd_entropy) (Roy & Vetterli 2007); numerical_rank = the number of singular values
  above s_max * max(N, D) * eps(float32) (numpy's matrix_rank tolerance at the embeddings' precision);
  condition_number = s_max / (smallest of those), so exactly dead dimensions (all-MiniLM-L6-v2 has
  three) show in numerical_rank instead of making the condition number ~1e17.
Pairwise quantities are computed blockwise in float64 on at most ``max_points`` rows (a seeded sample).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def alignment(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared distance between the unit vectors of positive pairs (a_i, b_i)."""
    return float((((_unit(a) - _unit(b)) ** 2).sum(axis=1)).mean())


def _pair_cosines_sum(x: np.ndarray, fn, block: int = 1024) -> tuple[float, int]:
    """sum of fn(cos(x_i, x_j)) over i < j and the number of such pairs."""
    total, n = 0.0, len(x)
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T  # [b, N]
        rows = np.arange(start, min(start + block, n))[:, None]
        upper = np.arange(n)[None, :] > rows  # j > i
        total += float(fn(sims[upper]).sum())
    return total, n * (n - 1) // 2


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """log mean exp(-t ||x_i - x_j||^2) over distinct pairs of unit vectors (||.||^2 = 2 - 2 cos)."""
    total, pairs = _pair_cosines_sum(_unit(x), lambda c: np.exp(-t * (2.0 - 2.0 * c)))
    return float(np.log(total / pairs))


def average_cosine(x: np.ndarray) -> float:
    """Mean cosine over distinct pairs: (||sum u||^2 - N) / (N (N - 1)) for unit vectors u."""
    u = _unit(x)
    n = len(u)
    return float((np.square(u.sum(axis=0)).sum() - n) / (n * (n - 1)))


def spectrum_metrics(x: np.ndarray) -> dict[str, float]:
    """``svd_entropy``, ``effective_rank``, ``numerical_rank`` and ``condition_number`` of the [N, D]
    matrix as given."""
    x = np.asarray(x, dtype=np.float64)
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    entropy = float(-(p * np.log(p)).sum())
    kept = s[s > s.max() * max(x.shape) * np.finfo(np.float32).eps]
    return {
        "svd_entropy": entropy,
        "effective_rank": float(np.exp(entropy)),
        "numerical_rank": float(len(kept)),
        "condition_number": float(kept.max() / kept.min()),
    }


def geometry_metrics(
    embeddings: np.ndarray,
    positives: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    max_points: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """All of the above for one set of embeddings; ``alignment`` only when positive pairs are given."""
    x = np.asarray(embeddings)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    out = {}
    if positives is not None and len(positives[0]):
        out["alignment"] = alignment(*positives)
    out["uniformity"] = uniformity(x)
    out["avg_cosine"] = average_cosine(x)
    out.update(spectrum_metrics(x))
    return out
