"""Paired comparison of two models on the same cases, and a correction for many metrics.

Candidate and champion are scored on the same cases, so the difference is taken per case and
the cases are resampled together (a paired bootstrap): a case that is hard for both does not
widen the interval, and the interval is about the difference itself, not two separate means.

A test asks whether the mean difference is above a bound at a one-sided confidence:
  non-inferiority: difference > -margin   (the candidate is not worse by more than the margin)
  improvement:     difference > +gain      (the candidate is better by at least the gain)
Its p-value is the share of bootstrap means at or below the bound (plus one, so it is never
zero). Holm's step-down method then keeps the chance of passing any guarded metric by luck
at or below 1 - confidence across all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


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
