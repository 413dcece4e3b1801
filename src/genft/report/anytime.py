"""Anytime-valid judgement of a finding part, for staged evaluation (a suite's `eval.stages`).

A staged cell holds the first items of a seeded order of its test set, and stops once every finding part that
uses it is decided.  Deciding on a bootstrap interval at every stage would inflate the error rate (peeking),
so the decision, and the report's verdict on any part whose cells stopped that way, rest on confidence
sequences (`sequential.interval`: valid at every stage at once, for the test set's mean).  For a part:

* each comparison's per-item statistic (a paired difference, or a ROUGE-L value for "~0") in the items' order,
  averaged over fine-tuning seeds, gets a confidence sequence at level alpha / M (M comparisons: a union bound,
  so all hold at once), expressed in units of its margin exactly as the pooled bootstrap (`findings`);
* the pooled bounds are the means of the comparisons' bounds (valid whenever all of them are), and the part's
  verdict follows the same rule as the bootstrap's; training-size steps are classified one by one.

Comparisons that select over conditions (best over shots) have no per-item statistic: a part holding one is
never decided early, and its cells run to the end of their test sets.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import sequential
from .model import Comp

KINDS = ("diff", "value")


def population(comp: Comp) -> int | None:
    """The test set's size when every record of the comparison is staged, else None.  A limit does not shrink
    it: the first `limit` items of a random order are draws without replacement from the whole test set, so
    the sequences bound the test set's mean (with the limit as the population they would bound the mean of
    those first items only, and a cell that reached its limit would seem to know it exactly)."""
    sizes = {None if r.stages is None else r.stages.of for c in comp.conds for r in c.cells}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


def item_values(comp: Comp) -> np.ndarray:
    """The per-item statistic on the items common to its conditions, in the items' (staged) order; each arm's
    value per item is the mean over its replicates."""
    conds = comp.conds
    common = set.intersection(*(set(r.doc_ids) for c in conds for r in c.cells))
    order = [d for d in conds[0].cells[0].doc_ids if d in common]
    arms = []
    for c in conds:
        rows = []
        for r in c.cells:
            where = {d: i for i, d in enumerate(r.doc_ids)}
            vals = r.items[c.metric]
            rows.append([np.nan if vals[where[d]] is None else vals[where[d]] for d in order])
        arms.append(np.nanmean(np.asarray(rows, dtype=float), axis=0))
    return arms[0] - arms[1] if comp.kind == "diff" else arms[0]


def bounds(comp: Comp, offset: float, unit: float, alpha: float) -> tuple[float, float] | None:
    """The comparison's confidence-sequence bounds in units ((statistic - offset) / unit), or None where there
    is none (not staged, or a selection over conditions)."""
    n_pop = population(comp) if comp.kind in KINDS and comp.conds else None
    if n_pop is None:
        return None
    x = item_values(comp)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return None
    lower, upper = (-1.0, 1.0) if comp.kind == "diff" else (0.0, 1.0)
    lo, hi = sequential.interval(x, lower, upper, n_pop, alpha)
    return (lo - offset) / unit, (hi - offset) / unit


def each_bounds(comps: Sequence[Comp], offsets: Sequence[float], units: Sequence[float],
                alpha: float) -> list[tuple[float, float]] | None:
    """Every comparison's bounds at alpha / M (M comparisons: all hold at once), or None unless every one has
    them."""
    if not comps:
        return None
    each = [bounds(c, o, u, alpha / len(comps)) for c, o, u in zip(comps, offsets, units)]
    return None if any(b is None for b in each) else each


def pooled_bounds(comps: Sequence[Comp], offsets: Sequence[float], units: Sequence[float],
                  alpha: float) -> tuple[float, float] | None:
    """Simultaneous bounds on the pooled effect (the mean of the comparisons' bounds at alpha / M each)."""
    each = each_bounds(comps, offsets, units, alpha)
    return None if each is None else mean_bounds(each)


def mean_bounds(each: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The pooled effect's bounds from the comparisons' (valid whenever all of theirs are)."""
    return float(np.mean([b[0] for b in each])), float(np.mean([b[1] for b in each]))


def disagree(each: Sequence[tuple[float, float]]) -> tuple[int, int]:
    """(comparisons whose bounds lie entirely above zero, entirely below): both non-zero is a part whose
    comparisons disagree in sign (mixed), by the same rule as the bootstrap's Holm-adjusted tests."""
    return sum(lo > 0 for lo, _ in each), sum(hi < 0 for _, hi in each)


def stopped_early(comps: Sequence[Comp]) -> bool:
    """Whether any record behind these comparisons stopped on a decision before its test set's end."""
    return any(r.stages is not None and r.stages.stopped == "decided" for c in comps for cond in c.conds
               for r in cond.cells)
