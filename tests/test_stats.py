"""The report's statistics against published or hand-computed values, and their properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.collate.stats import holm, mcnemar_exact, mcnemar_power, mcnemar_sample_size, \
    paired_bootstrap_interval, wilson_interval


def test_wilson_known_values():
    # 7/20: the textbook example (Newcombe 1998, Brown et al. 2001): 0.1812 to 0.5671.
    low, high = wilson_interval(7, 20)
    assert (round(low, 4), round(high, 4)) == (0.1812, 0.5671)
    # 0/20 and 20/20: the interval reaches the boundary exactly and has width > 0 (unlike
    # the Wald interval, which collapses to a point there).
    assert wilson_interval(0, 20) == (0.0, pytest.approx(0.16113, abs=1e-5))
    assert wilson_interval(20, 20) == (pytest.approx(0.83887, abs=1e-5), 1.0)
    # 81/263 at 95 %: 0.2553 to 0.3662 (Wilson 1927 as tabulated by Newcombe 1998, example 1).
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


@pytest.mark.parametrize("n", [1, 2, 5, 20, 200])
def test_wilson_contains_the_estimate_and_shrinks_with_n(n):
    previous = None
    for k in range(n + 1):
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
        assert low < high
        if previous is not None:
            assert low >= previous[0] and high >= previous[1]  # monotone in the count
        previous = (low, high)
    half = wilson_interval(n // 2, n)
    quadruple = wilson_interval(4 * (n // 2), 4 * n)
    assert quadruple[1] - quadruple[0] < half[1] - half[0]


def test_wilson_refuses_nonsense():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_exact_known_values():
    # 1 vs 9 discordant pairs: 2 * P(X <= 1 | Binomial(10, 1/2)) = 2 * 11 / 1024.
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1) == pytest.approx(22 / 1024, abs=1e-15)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # The same as scipy's exact binomial test on the discordant pairs.
    for gained, lost in [(2, 12), (7, 3), (20, 35)]:
        expected = scipy_stats.binomtest(gained, gained + lost, 0.5).pvalue
        assert mcnemar_exact(gained, lost) == pytest.approx(expected, rel=1e-12)


def test_holm_known_vector():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == [] and holm([0.2]) == [0.2]


def test_holm_properties():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = list(rng.uniform(0, 0.2, size=rng.integers(1, 9)))
        adjusted = holm(p)
        assert all(a >= raw for a, raw in zip(adjusted, p))  # never smaller than the raw p
        assert all(a <= min(1.0, len(p) * raw) + 1e-12 for a, raw in zip(adjusted, p))
        order = np.argsort(p)
        assert all(np.diff(np.array(adjusted)[order]) >= -1e-12)  # order kept


def test_connor_sample_size_known_value():
    # p10 = 0.15, p01 = 0.05: psi = 0.2, delta = 0.1;
    # (1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.19))^2 / 0.01 = 154.6 -> 155.
    assert mcnemar_sample_size(0.15, 0.05) == 155
    assert mcnemar_sample_size(0.05, 0.15) == 155  # symmetric in the direction
    assert mcnemar_sample_size(0.1, 0.1) is None  # no difference: no n detects it
    assert mcnemar_sample_size(0.3, 0.1) < mcnemar_sample_size(0.15, 0.05)


@pytest.mark.parametrize("p_gained, p_lost", [(0.15, 0.05), (0.1, 0.02), (0.3, 0.1)])
def test_exact_power_at_the_connor_size_is_near_80_percent(p_gained, p_lost):
    n = mcnemar_sample_size(p_gained, p_lost)
    # The exact test is conservative, so its power at Connor's n lies somewhat under 80 %.
    assert 0.7 <= mcnemar_power(n, p_gained, p_lost) <= 0.85
    assert mcnemar_power(n // 3, p_gained, p_lost) < mcnemar_power(n, p_gained, p_lost)
    assert mcnemar_power(4 * n, p_gained, p_lost) > 0.99


def test_exact_power_matches_simulation():
    n, p_gained, p_lost = 40, 0.2, 0.05
    rng = np.random.default_rng(0)
    draws = rng.multinomial(n, [p_gained, p_lost, 1 - p_gained - p_lost], size=20_000)
    rejected = np.mean([mcnemar_exact(g, lost) <= 0.05 for g, lost, _ in draws])
    assert mcnemar_power(n, p_gained, p_lost) == pytest.approx(rejected, abs=0.015)
    assert mcnemar_power(n, 0.1, 0.1) <= 0.05  # no difference: at most the test's size


def test_bootstrap_is_reproducible_and_contains_the_estimate():
    seeds = [[1, 0, 0, 1, -1, 0, 0, 0, 1, 0], [0, 1, 1, 0, 0, 0, 1, 0, 0, 0]]
    low, high = paired_bootstrap_interval(seeds)
    assert (low, high) == paired_bootstrap_interval(seeds)  # fixed seed
    estimate = np.mean([np.mean(s) for s in seeds])
    assert low <= estimate <= high and low < high
    # Constant differences leave nothing to resample.
    assert paired_bootstrap_interval([[1] * 7, [1] * 5]) == (1.0, 1.0)


def test_bootstrap_single_seed_matches_the_normal_approximation():
    # One seed, 400 samples, differences +1 (60), -1 (20), 0 (320): mean 0.1, sd of the mean
    # sqrt(var / n); the percentile interval must be close to mean +- 1.96 sd.
    d = np.array([1] * 60 + [-1] * 20 + [0] * 320)
    low, high = paired_bootstrap_interval([d])
    half = 1.959964 * d.std() / math.sqrt(d.size)
    assert low == pytest.approx(0.1 - half, abs=0.006)
    assert high == pytest.approx(0.1 + half, abs=0.006)


def test_bootstrap_widens_with_disagreeing_seeds():
    agreeing = paired_bootstrap_interval([[1] * 10 + [0] * 10] * 3)
    disagreeing = paired_bootstrap_interval([[1] * 20, [0] * 20, [1] * 10 + [0] * 10])
    assert disagreeing[1] - disagreeing[0] > agreeing[1] - agreeing[0]
    with pytest.raises(ValueError):
        paired_bootstrap_interval([[1, 0], []])
