"""Statistics: the (hierarchical) bootstrap over seeds and items, p-values, Holm's adjustment, pooling.

A comparison is a statistic of one or more *arms*.  An arm holds per-item values on the shared test items,
one row per replicate (fine-tuning seed).  Each resample draws the test items once (the same items for
every arm: paired), and for each replicate family (the arms that come from the same checkpoints) draws its
replicates with replacement: with two or more seeds the interval carries the seed-to-seed variance as well
as the item-to-item variance; with one seed it carries the item variance only (and says so).

Keyed draws (`items_key`): the item draws are seeded by the test items' key and each family's replicate
draws by the family, so every comparison on one test set resamples the same items in resample r and every
comparison of one model the same seeds.  Averaging such bootstrap distributions over comparisons is then the
bootstrap of the pooled statistic that resamples seeds and items within each test set (`pooled`).

p-values are analytic: the normal approximation with the bootstrap's standard error, so they are not
bounded below by 1/(resamples + 1) and survive a Holm adjustment over hundreds of comparisons.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

N_RESAMPLES = 2000
BOOT_SEED = 0


@dataclass(frozen=True)
class Arm:
    """values: (replicates, items); family: arms sharing a family share their replicate draws."""

    values: np.ndarray
    family: Hashable

    @property
    def replicates(self) -> int:
        return int(self.values.shape[0])


def stable_seed(seed: int, key: Hashable) -> list[int]:
    """A numpy seed sequence from the bootstrap seed and a key (stable across processes, unlike hash())."""
    return [seed, int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")]


def resampled_means(arms: Sequence[Arm], n_resamples: int = N_RESAMPLES, seed: int = BOOT_SEED,
                    items_key: Hashable | None = None) -> np.ndarray:
    """(n_resamples, len(arms)): each arm's mean over (resampled replicates, then resampled items).

    Without `items_key`: the item indices are `np.random.default_rng(seed).integers(0, n, size=(n_resamples,
    n))`, drawn first; then, per family with k > 1 replicates (in order of first appearance), `integers(0, k,
    (n_resamples, k))` from the same generator.  With `items_key`: the item indices come from
    `default_rng(stable_seed(seed, items_key))` and each family's replicate draws from
    `default_rng(stable_seed(seed, ("family", family)))`, so they are the same in every comparison."""
    if not arms:
        raise ValueError("a bootstrap needs at least one arm")
    n = arms[0].values.shape[1]
    if n == 0 or any(a.values.ndim != 2 or a.values.shape[1] != n for a in arms):
        raise ValueError(f"every arm needs the same, non-zero number of items: {[a.values.shape for a in arms]}")
    rng = np.random.default_rng(seed if items_key is None else stable_seed(seed, items_key))
    items = rng.integers(0, n, size=(n_resamples, n))
    draws: dict[Hashable, np.ndarray | None] = {}
    counts: dict[Hashable, int] = {}
    for a in arms:
        k = a.replicates
        if counts.setdefault(a.family, k) != k:
            raise ValueError(f"arms of family {a.family!r} have different replicate counts")
        if a.family not in draws:
            fam = rng if items_key is None else np.random.default_rng(stable_seed(seed, ("family", a.family)))
            draws[a.family] = fam.integers(0, k, size=(n_resamples, k)) if k > 1 else None
    out = np.empty((n_resamples, len(arms)))
    for j, a in enumerate(arms):
        v = np.asarray(a.values, dtype=float)
        d = draws[a.family]
        per_item = v[0][None, :] if d is None else v[d].mean(axis=1)  # (1 or R, n)
        out[:, j] = np.take_along_axis(np.broadcast_to(per_item, (n_resamples, n)), items, axis=1).mean(axis=1)
    return out


@dataclass(frozen=True)
class Estimate:
    """A statistic, its (1 - alpha) percentile interval and its bootstrap distribution."""

    value: float
    lo: float
    hi: float
    n_items: int
    replicates: int  # the most replicates of any arm: 1 = the interval carries the item variance only
    boot: np.ndarray = field(repr=False, compare=False)

    @property
    def se(self) -> float:
        """The bootstrap standard error."""
        return float(np.std(self.boot, ddof=1)) if len(self.boot) > 1 else float("nan")

    def p_above(self, x: float) -> float:
        """One-sided p-value of "the statistic exceeds x": P(Z >= (value - x) / se) under the normal
        approximation with the bootstrap standard error (se 0: 0 when the value exceeds x, else 1)."""
        se = self.se
        if not se > 1e-12:
            return 0.0 if self.value > x + 1e-12 else 1.0
        return float(norm.sf((self.value - x) / se))

    def p_below(self, x: float) -> float:
        """One-sided p-value of "the statistic is below x"."""
        se = self.se
        if not se > 1e-12:
            return 0.0 if self.value < x - 1e-12 else 1.0
        return float(norm.sf((x - self.value) / se))

    @property
    def variance_text(self) -> str:
        if self.replicates > 1:
            return f"{self.replicates} seeds, then items"
        return "1 seed: items only"


def estimate(arms: Sequence[Arm], stat: Callable[[np.ndarray], np.ndarray], n_resamples: int = N_RESAMPLES,
             seed: int = BOOT_SEED, alpha: float = 0.05, items_key: Hashable | None = None) -> Estimate:
    """stat maps arm means (..., len(arms)) to the statistic; it is applied to the data and to each resample."""
    point = np.array([np.asarray(a.values, dtype=float).mean() for a in arms])
    boot = np.asarray(stat(resampled_means(arms, n_resamples, seed, items_key)), dtype=float)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(stat(point[None, :])[0]), float(lo), float(hi), int(arms[0].values.shape[1]),
                    max(a.replicates for a in arms), boot)


def pooled(estimates: Sequence[Estimate], offsets: Sequence[float], units: Sequence[float],
           alpha: float = 0.05) -> Estimate:
    """The mean over comparisons of (statistic - offset) / unit, with its bootstrap from the comparisons' own
    (keyed, hence aligned) resamples: the interval resamples seeds and items within each test set."""
    if not estimates:
        raise ValueError("pooling needs at least one comparison")
    off, unit = np.asarray(offsets, dtype=float), np.asarray(units, dtype=float)
    if np.any(~(unit > 0)):
        raise ValueError(f"pooling needs positive units, got {list(units)}")
    value = float(np.mean([(e.value - o) / u for e, o, u in zip(estimates, off, unit)]))
    boot = np.mean([(e.boot - o) / u for e, o, u in zip(estimates, off, unit)], axis=0)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(lo), float(hi), int(sum(e.n_items for e in estimates)),
                    max(e.replicates for e in estimates), boot)


def difference(a: Arm, b: Arm, **kw) -> Estimate:
    """mean(a) - mean(b), paired over items (and over replicates when a and b share a family)."""
    return estimate([a, b], lambda m: m[:, 0] - m[:, 1], **kw)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES,
                     seed: int = BOOT_SEED, alpha: float = 0.05) -> tuple[float, float, float]:
    """mean(a - b) and its (1 - alpha) percentile interval, resampling item indices (the same for both)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs two equal-length 1-d sequences, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one item")
    e = difference(Arm(a[None, :], "a"), Arm(b[None, :], "b"), n_resamples=n_resamples, seed=seed, alpha=alpha)
    return float((a - b).mean()), e.lo, e.hi


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the comparisons of one claim)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [float(x) for x in adj]


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile (t_{0.975, df})."""
    return float(student_t.ppf(0.975, df)) if df >= 1 else float("nan")


def seed_interval(values: Sequence[float]) -> dict:
    """Mean, mean ± t_{0.975,n-1}·sd/√n (sample sd), min and max of replicate scores."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mean = float(v.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "lo": float("nan"), "hi": float("nan"),
                "min": mean, "max": mean}
    sd = float(v.std(ddof=1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half,
            "min": float(v.min()), "max": float(v.max())}
