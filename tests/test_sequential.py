"""Anytime-valid confidence sequences for a paired mean difference over a finite test set, items drawn
without replacement (genft.report.sequential): under a true null, stopping at the first stage whose interval
excludes 0 errs at most alpha of the time, for several item distributions; a real effect is found before the
test set is exhausted; the same peeking with a fixed-sample interval errs far more often (what this guards)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats

from genft.report import sequential as sq

N, STEP, ALPHA = 500, 50, 0.05
CHECKS = list(range(STEP, N + 1, STEP))  # every stage's end, the last one the whole test set
GRID = 500  # the simulation's grid (the default 1000 only narrows the bounds by a grid step)


def _null_populations() -> dict[str, np.ndarray]:
    """Paired differences of N items whose mean is exactly 0: accuracy-like (+1/-1/0), rare disagreements,
    a skewed one (many small gains, few large losses), and continuous ROUGE-like differences."""
    rng = np.random.default_rng(7)
    cont = rng.beta(2, 5, N) - rng.beta(2, 5, N)
    cont = np.clip(cont - cont.mean(), -1, 1)
    cont -= cont.mean()
    return {"accuracy": np.array([1.0] * 75 + [-1.0] * 75 + [0.0] * 350),
            "rare": np.array([1.0] * 8 + [-1.0] * 8 + [0.0] * 484),
            "skewed": np.array([0.1] * 450 + [-0.9] * 50),
            "continuous": cont}


def _false_rate(pop: np.ndarray, reps: int, rng, rule) -> float:
    return sum(rule(rng.permutation(pop)) is not None for _ in range(reps)) / reps


def _sequential(x):
    return sq.first_exclusion(x, -1, 1, N, 0.0, ALPHA, CHECKS, grid=GRID)


def _naive(x):
    """A fixed-sample t interval (with the finite-population correction) looked at after every stage."""
    for t in CHECKS[:-1]:
        v = x[:t]
        half = stats.t.ppf(1 - ALPHA / 2, t - 1) * v.std(ddof=1) / np.sqrt(t) * np.sqrt(1 - t / N)
        if abs(v.mean()) > half:
            return t
    return None


def test_stopping_at_the_first_exclusion_keeps_false_verdicts_at_most_alpha():
    t0 = time.time()
    rng = np.random.default_rng(0)
    rates = {name: _false_rate(pop, 100, rng, _sequential) for name, pop in _null_populations().items()}
    assert all(rate <= ALPHA for rate in rates.values()), rates
    # the guard has teeth: peeking at a fixed-sample interval after every stage errs well above alpha
    naive = _false_rate(_null_populations()["accuracy"], 400, np.random.default_rng(1), _naive)
    assert naive > 2 * ALPHA, naive
    assert time.time() - t0 < 60  # ~10 s on an idle 2-core machine


def test_a_real_effect_is_detected_before_the_test_set_is_exhausted():
    pop = np.array([1.0] * 125 + [-1.0] * 75 + [0.0] * 300)  # +0.10 accuracy
    rng = np.random.default_rng(2)
    stops = [_sequential(rng.permutation(pop)) for _ in range(40)]
    early = [s for s in stops if s is not None and s < N]
    assert len(early) >= 0.9 * len(stops) and np.median(early) <= 350, stops


def test_interval_covers_the_mean_and_closes_on_it_at_the_end():
    rng = np.random.default_rng(3)
    pop = np.clip(rng.normal(0.05, 0.3, N), -1, 1)
    x = rng.permutation(pop)
    lo, hi = sq.path(x, -1, 1, N)
    assert (lo <= pop.mean()).all() and (hi >= pop.mean()).all()
    assert (np.diff(lo) >= -1e-12).all() and (np.diff(hi) <= 1e-12).all()  # a running intersection
    assert hi[-1] - lo[-1] < 1e-6 and lo[-1] == pytest.approx(pop.mean(), abs=1e-6)  # every item seen
    assert hi[49] - lo[49] > hi[299] - lo[299] > hi[449] - lo[449]  # narrower as items accrue, fastest near N
    assert sq.interval(x[:300], -1, 1, N) == (lo[299], hi[299])
    assert sq.interval([], -1, 1, N) == (-1.0, 1.0)
    # the logical bounds alone: 10 items of +1 seen of 20 can't average below (10 - 10) / 20 = 0
    lo10, _ = sq.interval([1.0] * 10, -1, 1, 20)
    assert lo10 >= -1e-6


@pytest.mark.parametrize("args, match", [
    (([0.5, 2.0], -1, 1, 10), r"lie in \[-1, 1\]"),
    (([0.5, float("nan")], -1, 1, 10), "NaN"),
    (([0.5] * 5, -1, 1, 4), "population_size 4"),
    (([0.5], 1, 1, 4), "must be above"),
])
def test_bad_input_is_named(args, match):
    with pytest.raises(ValueError, match=match):
        sq.interval(*args)


def test_a_comparisons_item_values_pair_two_staged_cells_in_their_drawn_order(tmp_path):
    """What `interval` is given for a staged comparison (anytime.item_values): the items both cells hold, in
    the seeded order they were drawn in (sorted by doc id they are no longer a random order)."""
    from report_records import ft, record, roundtrip

    from genft.report import SuiteData, anytime
    from genft.suite.stages import item_order
    from genft.suite.store import CellRecord, key_of

    def staged(rec, of=100):
        raw = rec.model_dump(mode="json")
        raw["material"]["stages"] = {"seed": 0, "step": 4}
        raw.update(key=key_of(raw["material"]), doc_ids=list(item_order(0, of)[:rec.n]))
        raw["stages"] = {"seed": 0, "step": 4, "stage": rec.n // 4, "of": of, "stopped": None}
        raw.pop("checksum", None)
        return CellRecord.model_validate(raw)

    f = ft("sentiment", "builtin_products")
    tuned = staged(record("sentiment", "builtin_products", "in", f, correct=[1, 1, 0, 1, 0, 0, 1, 1]))
    base = staged(record("sentiment", "builtin_products", "in", None, correct=[0, 1, 0, 0]))
    s = SuiteData("s", roundtrip(tmp_path, [tuned, base]))
    g = next(g for g in s.groups.values() if not g.is_base)
    comp = s.compare(s.cond(g, ("sentiment", "builtin_products"), 1, 0),
                     s.cond(s.base_group(g.base), ("sentiment", "builtin_products"), 1, 0))
    assert anytime.item_values(comp).tolist() == [1, 0, 0, 1]  # the 4 items both hold, in the drawn order
    assert anytime.population(comp) == 100
    # an unstaged arm: no confidence sequence (the report keeps its bootstrap)
    plain = record("sentiment", "builtin_products", "in", None, correct=[0, 1, 0, 0],
                   doc_ids=sorted(item_order(0, 100)[:4]))
    s = SuiteData("s", roundtrip(tmp_path, [tuned, plain]))
    g = next(g for g in s.groups.values() if not g.is_base)
    comp = s.compare(s.cond(g, ("sentiment", "builtin_products"), 1, 0),
                     s.cond(s.base_group(g.base), ("sentiment", "builtin_products"), 1, 0))
    assert anytime.population(comp) is None and anytime.bounds(comp, 0.0, 0.05, 0.05) is None
