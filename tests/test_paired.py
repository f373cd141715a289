"""The paired test of per-query scores (``pipeline.eval.paired``) against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.eval.paired import paired_difference


def test_identical_scores_differ_by_nothing():
    test = paired_difference([1.0, 0.5, 0.0], [1.0, 0.5, 0.0])
    assert (test.mean, test.low, test.high, test.p) == (0.0, 0.0, 0.0, 1.0)
    assert (test.won, test.lost, test.tied) == (0, 0, 3)


def test_a_uniform_gain_has_a_point_interval_and_the_exact_sign_flip_p():
    test = paired_difference([2.0] * 5, [1.0] * 5)
    assert test.low == test.high == test.mean == 1.0
    assert test.p == pytest.approx(2 / 2**5)  # all signs alike: 2 of the 32 flips are as extreme
    assert test.won == 5


def test_a_clear_shift_is_found_and_noise_alone_is_not():
    rng = np.random.default_rng(1)
    base = rng.normal(size=300)
    shifted = paired_difference(base + 0.5 + rng.normal(scale=0.3, size=300), base)
    assert shifted.low < 0.5 < shifted.high and shifted.low > 0 and shifted.p < 0.001
    noise = paired_difference(base + rng.normal(scale=0.3, size=300), base)
    assert noise.low < 0 < noise.high and noise.p > 0.01


def test_lists_that_cannot_be_paired_are_refused():
    with pytest.raises(ValueError, match="paired test"):
        paired_difference([1.0], [0.0])
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [0.0, 1.0, 2.0])
