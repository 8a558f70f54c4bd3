"""KID: the unbiased MMD² estimator is unbiased (mean 0 for equal distributions) and detects a shift."""

import itertools

import numpy as np
import pytest

from diffspace.errors import DataError
from diffspace.metrics.kid import kid, mmd2_unbiased


def test_mmd2_matches_definition_by_loops():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((6, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    sxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(5), 2)) / (5 * 4)
    syy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(6), 2)) / (6 * 5)
    sxy = sum(k(a, b) for a in x for b in y) / (5 * 6)
    assert mmd2_unbiased(x, y) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-12)


def _replicates(shift: float, reps: int = 60, n: int = 100, d: int = 16) -> np.ndarray:
    rng = np.random.default_rng(1)
    vals = []
    for _ in range(reps):  # independent pairs of samples; one subset = the whole sample, so each value is unbiased
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + shift
        vals.append(kid(x, y, num_subsets=1, max_subset_size=n)[0])
    return np.array(vals)


def test_kid_unbiased_for_equal_distributions():
    vals = _replicates(0.0)
    se = vals.std(ddof=1) / np.sqrt(len(vals))
    assert abs(vals.mean()) < 3 * se  # E[MMD²_u] = 0; |mean| > 3 SE has probability 0.3 % under the null
    # The test has power: the biased (V-statistic) estimate, which keeps the i = j kernel terms, is off by
    # ≈ 2(E k(x,x) − E k(x,x'))/n, many standard errors.
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((100, 16)), rng.standard_normal((100, 16))
    kxx, kyy, kxy = ((a @ b.T / 16 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    assert biased - mmd2_unbiased(x, y) > 10 * se


def test_kid_over_subsets_of_one_large_sample():
    # 50 subsets of 200 out of 10,000 samples overlap little, so their spread gives a standard error.
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((10_000, 8)), rng.standard_normal((10_000, 8))
    mean, std = kid(x, y, num_subsets=50, max_subset_size=200, seed=3)
    assert abs(mean) < 3 * std / np.sqrt(50)


def test_kid_positive_for_shifted_distributions():
    vals = _replicates(0.3)
    se = vals.std(ddof=1) / np.sqrt(len(vals))
    assert vals.mean() > 10 * se


def test_kid_seeded_and_checked():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 4)), rng.standard_normal((200, 4))
    assert kid(x, y, 10, 50, seed=1) == kid(x, y, 10, 50, seed=1)
    with pytest.raises(DataError, match="same dimension"):
        kid(x, y[:, :3])
