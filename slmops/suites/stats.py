"""Paired comparison of two models on the same cases, and a correction for many metrics.

Candidate and champion are scored on the same cases, so the difference is taken per case and
the cases are resampled together (a paired bootstrap): a case that is hard for both does not
widen the interval, and the interval is about the difference itself, not two separate means.

A test asks whether the mean difference is above a bound at a one-sided confidence:
  non-inferiority: difference > -margin   (the candidate is not worse by more than the margin)
  improvement:     difference > +gain      (the candidate is better by at least the gain)
Its p-value is the share of bootstrap means at or below the bound (plus one, so it is never
zero). The bootstrap is only as good as the cases that differ: with a handful of discordant
pairs (or none) its resamples take a few values and its p-value reads far smaller than the
evidence allows (no discordant case in 100 gave p=0.0005 against a margin of 0.02, where a
candidate 0.02 worse shows no difference on 100 cases with chance 0.13). So a pass/fail metric
with fewer than EXACT_BELOW discordant pairs is tested from the exact distribution of its
discordant pairs instead (`exact_paired_p`). Holm's step-down method then keeps the chance of
passing any guarded metric by luck at or below 1 - confidence across all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

EXACT_BELOW = (
    25  # discordant pairs under which a pass/fail metric is tested exactly (McNemar's rule)
)


@dataclass(frozen=True)
class PairedResult:
    n: int
    candidate_mean: float
    champion_mean: float
    diff: float
    ci_low: float  # two-sided interval of the difference at `confidence`
    ci_high: float
    boot: np.ndarray  # bootstrap means of the difference (for p-values against any bound)

    def p_value(self, bound: float) -> float:
        """One-sided p-value of H0: difference <= bound (small: the difference is above it)."""
        return float((np.sum(self.boot <= bound) + 1) / (len(self.boot) + 1))


def resample_indices(n: int, iterations: int, seed: int) -> np.ndarray:
    """The bootstrap's case indices, shared by every metric scored on the same cases."""
    return np.random.default_rng(seed).integers(0, n, size=(iterations, n))


def paired_bootstrap(
    candidate: np.ndarray, champion: np.ndarray, *, confidence: float, indices: np.ndarray
) -> PairedResult:
    """Mean difference candidate - champion with a paired bootstrap interval."""
    if candidate.shape != champion.shape or candidate.ndim != 1 or not len(candidate):
        raise ValueError("paired scores need two equal-length, non-empty 1-D arrays")
    diff = candidate - champion
    boot = diff[indices].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return PairedResult(
        n=len(diff),
        candidate_mean=float(candidate.mean()),
        champion_mean=float(champion.mean()),
        diff=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        boot=boot,
    )


def mean_interval(
    scores: np.ndarray, *, confidence: float, indices: np.ndarray
) -> tuple[float, float]:
    """Bootstrap interval of one model's mean score (for the report's error bars)."""
    boot = scores[indices].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def holm(p_values: dict[str, float], alpha: float) -> tuple[dict[str, bool], dict[str, float]]:
    """Holm's step-down test: which hypotheses are rejected, and the adjusted p-values."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m = len(order)
    rejected: dict[str, bool] = {}
    adjusted: dict[str, float] = {}
    running = 0.0
    still_rejecting = True
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[key]))
        adjusted[key] = running
        still_rejecting = still_rejecting and p_values[key] <= alpha / (m - rank)
        rejected[key] = still_rejecting
    return rejected, adjusted


def detectable_difference(n: int, discordance: float, alpha: float, power: float) -> float:
    """The smallest difference a paired pass/fail comparison on `n` cases can resolve: a
    one-sided test at level `alpha` that finds a true difference this large with probability
    `power`, when a share `discordance` of the cases is scored differently by the two models
    (the cases on which they agree carry no information about the difference):
        (z_(1-alpha) + z_power) * sqrt(discordance / n)
    """
    if n <= 0:
        return math.inf
    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return z * math.sqrt(max(discordance, 0.0) / n)


def cases_needed(margin: float, discordance: float, alpha: float, power: float) -> int:
    """How many cases make `margin` resolvable (the inverse of detectable_difference)."""
    if margin <= 0:
        return 0 if discordance <= 0 else 10**9
    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return math.ceil(discordance * (z / margin) ** 2)


def exact_paired_p(candidate: np.ndarray, champion: np.ndarray, bound: float) -> float:
    """One-sided p-value of H0: P(candidate passes) - P(champion passes) <= bound, for
    pass/fail scores (0 or 1) paired case by case, from the exact distribution of the
    discordant cases (McNemar's setting, with a margin).

    Only the discordant cases count: b where the candidate alone passes, c where the champion
    alone does. Under H0 at its boundary, with discordance psi = p_b + p_c, (b, c) is
    trinomial with p_b - p_c = bound, and the p-value is the chance of b - c at least as
    large as observed. psi is a nuisance parameter, taken at its most likely value under H0
    given the data (Lloyd's "estimated" or E test, 2008): no bootstrap, no normal
    approximation. With no discordant case in n it is (1 - |bound|)^n, the chance that a
    candidate |bound| worse would show no difference. (Maximising over every plausible psi
    instead, Berger and Boos' exact test, measured 0.07 for 11 discordant cases in 40 whose
    difference was -0.075 against a margin of 0.25: too blunt for suites of 40 cases; the E
    test's size at the boundary is checked by enumeration in the tests.)
    """
    from scipy.optimize import minimize_scalar
    from scipy.stats import binom

    cand, champ = np.asarray(candidate, dtype=float), np.asarray(champion, dtype=float)
    if cand.shape != champ.shape or cand.ndim != 1 or not len(cand):
        raise ValueError("paired scores need two equal-length, non-empty 1-D arrays")
    if not np.isin(cand, (0.0, 1.0)).all() or not np.isin(champ, (0.0, 1.0)).all():
        raise ValueError("the exact test is for pass/fail scores (0 or 1)")
    n = len(cand)
    b = int(np.sum((cand == 1) & (champ == 0)))
    c = int(np.sum((cand == 0) & (champ == 1)))
    lo = abs(bound)
    if lo >= 1.0:
        return 0.0 if bound <= -1.0 else 1.0

    def neg_loglik(psi: float) -> float:
        cells = ((b, (psi + bound) / 2), (c, (psi - bound) / 2), (n - b - c, 1 - psi))
        return -sum(count * math.log(max(p, 1e-300)) for count, p in cells if count)

    psi = float(minimize_scalar(neg_loglik, bounds=(lo, 1.0), method="bounded").x)
    psi = min(max(psi, lo), 1.0)
    if psi <= 0:  # bound 0 and no discordant case: nothing differs, nothing is shown
        return 1.0
    k = np.arange(n + 1)
    need = np.ceil((k + b - c) / 2)  # b' >= need  <=>  b' - c' = 2b' - k >= b - c
    q = min(max((psi + bound) / (2 * psi), 0.0), 1.0)  # P(candidate | a discordant case)
    return float(min(1.0, np.sum(binom.pmf(k, n, psi) * binom.sf(need - 1, k, q))))
