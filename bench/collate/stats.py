"""The statistics behind the report: intervals, paired tests, multiple testing, power.

Pure functions on counts and arrays (no I/O, no knowledge of benchmarks), so each can be
checked against published values. The choices, and why:

- **Wilson score interval** for a binomial proportion (verified accuracy). Its coverage stays
  close to the nominal 95 % on average for small n and for proportions near 0 or 1, where the
  Wald interval collapses (0/20 gives [0, 0]); Clopper-Pearson guarantees at least 95 % but is
  markedly wider at the sample sizes we have (20-200), which would hide real effects
  (Brown, Cai & DasGupta 2001, "Interval estimation for a binomial proportion").
- **Exact McNemar test** for a pruned level against its dense level on the same samples: only
  the discordant pairs carry information; under "no difference" each falls either way with
  probability 1/2, so the two-sided p-value is that of a binomial test on them, exact at any
  sample size (the chi-square version is not, below about 25 discordant pairs).
- **Holm's step-down correction** over the pruned levels of one experiment: it controls the
  family-wise error rate like Bonferroni under any dependence between the tests, and is
  uniformly more powerful than it.
- **Two-stage paired bootstrap** for the mean difference over seeds: seeds are resampled with
  replacement, then within each drawn seed its paired samples, so both sources of variation
  (training seed, test sample) enter the interval; percentile interval, fixed seed, so a report
  is reproducible. Resampling samples is done exactly through a multinomial over the distinct
  differences (-1, 0, 1), which costs O(seeds) per resample.
- **Spearman's rank correlation** for "does a quantity predict verification time": rank-based,
  so it needs no model of how time grows and is unchanged by any monotone transform of either
  side (log time, a censored time set to the timeout, which ties at the top); its p-value is
  scipy's (t distribution with n - 2 degrees of freedom; exact enough from n of about 10).
- **Sample size for McNemar** (Connor 1987, "Sample size for testing differences in proportions
  for the paired-sample design", Biometrics 43:207): the normal approximation, two-sided; and
  the exact power of the exact test at a given n, to say what the test could have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided significance level of every test in the report
POWER = 0.80  # the power a sample size is computed for
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def _z(confidence: float) -> float:
    return float(scipy_stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: float, n: float, confidence: float = CONFIDENCE
                    ) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``, as fractions in [0, 1]."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0 trials (got {n})")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] (got {successes} of {n})")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Exact at the ends (p = 0 or 1), where rounding could step just outside [0, 1].
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided p-value of the exact McNemar test: ``gained`` pairs favour one condition,
    ``lost`` the other (the discordant pairs). 1.0 without discordant pairs."""
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be >= 0 (got {gained}, {lost})")
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail = scipy_stats.binom.cdf(min(gained, lost), discordant, 0.5)
    return float(min(1.0, 2 * tail))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: reject where the adjusted value <= alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def paired_bootstrap_interval(differences: Sequence[Sequence[float]],
                              confidence: float = CONFIDENCE,
                              resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the mean paired difference per seed.

    ``differences[s]`` holds, for seed ``s``, one difference per paired sample (e.g. verified at
    the pruned level minus verified at the dense level: -1, 0 or 1). Each resample draws the
    seeds with replacement and, for each drawn seed, its samples with replacement."""
    per_seed = [np.asarray(d, dtype=float) for d in differences]
    if not per_seed or any(d.size == 0 for d in per_seed):
        raise ValueError("every seed needs at least one paired sample")
    rng = np.random.default_rng(seed)
    seeds = len(per_seed)
    chosen = rng.integers(0, seeds, size=(resamples, seeds))
    means = np.empty((resamples, seeds))
    for s, d in enumerate(per_seed):
        values, counts = np.unique(d, return_counts=True)
        where = chosen == s
        # Drawing d.size samples with replacement = a multinomial over the distinct values.
        draws = rng.multinomial(d.size, counts / d.size, size=int(where.sum()))
        means[where] = draws @ values / d.size
    estimates = means.mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)


def mcnemar_sample_size(p_gained: float, p_lost: float, alpha: float = ALPHA,
                        power: float = POWER) -> int | None:
    """Pairs needed to detect discordance rates ``p_gained`` vs ``p_lost`` (each a fraction of
    all pairs) with a two-sided McNemar test at ``alpha`` with ``power`` (Connor 1987). None
    when the rates are equal: no number of samples detects a difference of zero."""
    if not (0 <= p_gained <= 1 and 0 <= p_lost <= 1 and p_gained + p_lost <= 1):
        raise ValueError(f"discordance rates must be fractions summing to <= 1 "
                         f"(got {p_gained}, {p_lost})")
    delta = p_gained - p_lost
    if delta == 0:
        return None
    psi = p_gained + p_lost
    z_alpha = float(scipy_stats.norm.ppf(1 - alpha / 2))
    z_beta = float(scipy_stats.norm.ppf(power))
    root = z_alpha * math.sqrt(psi) + z_beta * math.sqrt(max(psi - delta * delta, 0.0))
    return math.ceil(root * root / (delta * delta))


def mcnemar_power(n: int, p_gained: float, p_lost: float, alpha: float = ALPHA) -> float:
    """Exact power of the exact two-sided McNemar test at ``alpha`` with ``n`` pairs, when a
    pair is discordant in favour of one side with probability ``p_gained`` and of the other
    with ``p_lost``."""
    psi = p_gained + p_lost
    if n <= 0 or psi == 0:
        return 0.0
    share = p_gained / psi
    m = np.arange(1, n + 1)
    weights = scipy_stats.binom.pmf(m, n, psi)
    # Per number of discordant pairs m: the largest k with P(X <= k) <= alpha / 2 under
    # Binomial(m, 1/2). The test rejects at g <= k or g >= m - k (it is symmetric).
    k = scipy_stats.binom.ppf(alpha / 2, m, 0.5)
    k = np.where(scipy_stats.binom.cdf(k, m, 0.5) > alpha / 2, k - 1, k)
    reject = np.where(k >= 0, scipy_stats.binom.cdf(k, m, share)
                      + scipy_stats.binom.sf(m - k - 1, m, share), 0.0)
    return float(min(np.sum(weights * reject), 1.0))


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of ``n`` pairs and its two-sided p-value; both None when undefined
    (fewer than 3 pairs, or one side constant: no ranking to compare)."""

    n: int
    rho: float | None
    p_value: float | None


def spearman(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Spearman's rank correlation of paired values (ties get their mean rank)."""
    x_values = np.asarray(x, dtype=float)
    y_values = np.asarray(y, dtype=float)
    if x_values.shape != y_values.shape or x_values.ndim != 1:
        raise ValueError(f"need two equally long sequences (got {x_values.shape}, "
                         f"{y_values.shape})")
    if not (np.all(np.isfinite(x_values)) and np.all(np.isfinite(y_values))):
        raise ValueError("values must be finite")
    n = int(x_values.size)
    if n < 3 or np.ptp(x_values) == 0 or np.ptp(y_values) == 0:
        return Correlation(n, None, None)
    rho, p_value = scipy_stats.spearmanr(x_values, y_values)
    return Correlation(n, float(rho), float(p_value))
