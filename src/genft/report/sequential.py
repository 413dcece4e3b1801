"""Anytime-valid confidence sequences for the mean of a bounded per-item value (a paired difference of two
arms) over a finite test set whose items are taken in a random order without replacement, as staged
evaluation takes them (genft.suite.stages: a seeded permutation, the same for every cell of a test set).

Method: the hedged betting confidence sequence of Waudby-Smith & Ramdas (Estimating means of bounded random
variables by betting, JRSS-B 86(1), 2024: Theorem 3, and its form for sampling without replacement, their
Section 6; first in "Confidence sequences for sampling WoR", NeurIPS 2020), with predictable plug-in bets.
With the values rescaled to x in [0, 1] and N items in the population, for a candidate mean m the
conditional mean of the next draw given the past is mu_t(m) = (N m - S_{t-1}) / (N - t + 1) (S: the sum so
far), and

    K+_t(m) = prod_i (1 + l+_i (x_i - mu_i(m))),   K-_t(m) = prod_i (1 - l-_i (x_i - mu_i(m)))

are nonnegative martingales when m is the population's mean, for any bets l fixed before x_i is seen
(here l_i = sqrt(2 log(2/alpha) / (s2_{i-1} i log(1 + i))) from the regularized running variance s2,
truncated at 1/(2 mu_i) resp. 1/(2 (1 - mu_i))).  By Ville's inequality, max(K+, K-)/2 >= 1/alpha
happens at ANY time with probability at most alpha, so the set of m never rejected so far is a confidence
sequence: it covers the mean at every stage simultaneously, whenever one looks and whenever one stops.  It is
intersected with the logical bounds (the unseen N - t items lie in [lower, upper]), so at t = N it is the
mean itself.  The m are a grid of `grid` + 1 points; the bounds are widened by one grid step (a conservative
hull of the set).

The guarantee is over the order's randomness: the order must not depend on the items' values (a seed fixed
before evaluation), as genft's is.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

THETA = 0.5  # the weight of the upward bet (and 1 - THETA of the downward one)
TRUNCATION = 0.5  # bets are at most TRUNCATION / mu (up) and TRUNCATION / (1 - mu) (down)
ROUNDING = 1e-9  # bounds are widened by this share of the range, so that rounding never excludes the mean


def _check(values: Sequence[float], lower: float, upper: float, population_size: int, alpha: float) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be a sequence of numbers, got shape {x.shape}")
    if not upper > lower:
        raise ValueError(f"upper ({upper}) must be above lower ({lower})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not isinstance(population_size, (int, np.integer)) or population_size < max(len(x), 1):
        raise ValueError(f"population_size {population_size!r}: must be an integer of at least the {len(x)} values")
    if np.isnan(x).any() or (x < lower).any() or (x > upper).any():
        raise ValueError(f"values must lie in [{lower}, {upper}] (no NaN)")
    return (x - lower) / (upper - lower)


def _bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """Predictable plug-in bets: bet t uses x_1..x_{t-1} only (a running mean and variance, regularized
    towards 1/2 and 1/4 by one pseudo-observation)."""
    t = np.arange(1, len(x) + 1)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    var_before = np.concatenate(([0.25], var[:-1]))
    return np.sqrt(2 * np.log(2 / alpha) / (var_before * t * np.log1p(t)))


def _rejected(x: np.ndarray, m: np.ndarray, n_pop: int, alpha: float, bets: np.ndarray) -> np.ndarray:
    """times x candidate means: True where the candidate mean m has been rejected at or before time t."""
    t = np.arange(1, len(x) + 1)
    s_before = np.concatenate(([0.0], np.cumsum(x)[:-1]))
    mu = (n_pop * m[None, :] - s_before[:, None]) * (1.0 / (n_pop - t + 1))[:, None]
    impossible = (mu < 0) | (mu > 1)
    np.clip(mu, 1e-12, 1 - 1e-12, out=mu)
    dx = x[:, None] - mu
    up = np.minimum(bets[:, None], TRUNCATION / mu)  # the truncation keeps every factor >= 1 - TRUNCATION
    down = np.minimum(bets[:, None], TRUNCATION / (1 - mu))
    up *= dx
    down *= -dx
    np.log1p(up, out=up)
    np.log1p(down, out=down)
    np.cumsum(up, axis=0, out=up)  # log K+ and log K-
    np.cumsum(down, axis=0, out=down)
    up += np.log(THETA)
    down += np.log(1 - THETA)
    np.maximum(up, down, out=up)
    return np.logical_or.accumulate(impossible | (up >= np.log(1 / alpha)), axis=0)


def path(values: Sequence[float], lower: float, upper: float, population_size: int, alpha: float = 0.05,
         grid: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The confidence sequence after each value: arrays lo[t], hi[t] (t = 1..len(values)) in the values'
    units, each the running intersection up to t; P(the population mean ever leaves them) <= alpha."""
    x = _check(values, lower, upper, population_size, alpha)
    n = len(x)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    m = np.linspace(0.0, 1.0, grid + 1)
    bets = _bets(x, alpha)
    kept = np.empty((n, len(m)), dtype=bool)
    cols = max(1, 2_000_000 // n)  # bound the memory of one block
    for i in range(0, len(m), cols):
        kept[:, i:i + cols] = ~_rejected(x, m[i:i + cols], population_size, alpha, bets)
    any_kept = kept.any(axis=1)
    lo = np.where(any_kept, m[np.argmax(kept, axis=1)] - 1.0 / grid, 0.0)
    hi = np.where(any_kept, m[len(m) - 1 - np.argmax(kept[:, ::-1], axis=1)] + 1.0 / grid, 1.0)
    t = np.arange(1, n + 1)
    s = np.cumsum(x)
    logical_lo, logical_hi = s / population_size, 1 - (t - s) / population_size
    lo = np.maximum(np.maximum(lo, logical_lo), 0.0)
    hi = np.minimum(np.minimum(hi, logical_hi), 1.0)
    empty = lo > hi  # only on the alpha event (or a set narrower than the grid): the logical bounds hold
    lo[empty], hi[empty] = logical_lo[empty], logical_hi[empty]
    lo, hi = lo - ROUNDING, hi + ROUNDING
    scale = upper - lower
    return lower + scale * np.maximum(lo, 0.0), lower + scale * np.minimum(hi, 1.0)


def interval(values: Sequence[float], lower: float, upper: float, population_size: int, alpha: float = 0.05,
             grid: int = 1000) -> tuple[float, float]:
    """(lo, hi) for the mean of all `population_size` items, from the values seen so far (in the order they
    were drawn): valid simultaneously over every stage, so a rule that stops at the first stage whose
    interval excludes a value errs with probability at most alpha.  No values: the whole range."""
    if len(values) == 0:
        _check(values, lower, upper, population_size, alpha)
        return float(lower), float(upper)
    lo, hi = path(values, lower, upper, population_size, alpha, grid)
    return float(lo[-1]), float(hi[-1])


def first_exclusion(values: Sequence[float], lower: float, upper: float, population_size: int, value: float = 0.0,
                    alpha: float = 0.05, checks: Sequence[int] | None = None, grid: int = 1000) -> int | None:
    """The first check (a number of values seen, e.g. each stage's end; default: every value) at which the
    interval excludes `value`; None if it never does."""
    lo, hi = path(values, lower, upper, population_size, alpha, grid)
    for t in (checks if checks is not None else range(1, len(lo) + 1)):
        if not 1 <= t <= len(lo):
            raise ValueError(f"check {t}: outside 1..{len(lo)}")
        if lo[t - 1] > value or hi[t - 1] < value:
            return int(t)
    return None
