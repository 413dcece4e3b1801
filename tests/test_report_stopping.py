"""The stop decision of staged evaluation and the report's anytime-valid verdicts, on staged records as the
suite writes them (the first n items of the seeded order, the stages in the key material)."""
from __future__ import annotations

import numpy as np
from report_records import ft, record, roundtrip

from genft.report import SuiteData, findings
from genft.report.stopping import make_decide
from genft.suite.stages import item_order
from genft.suite.store import CellRecord, StageInfo, key_of

OF, STEP, SEED = 500, 100, 0


def staged(rec: CellRecord, stage: int = 1, stopped: str | None = None, why: str | None = None) -> CellRecord:
    """The record as a staged cell holds it after `stage` stages: doc ids in the order, stages in the key."""
    raw = rec.model_dump(mode="json")
    n = rec.n
    assert n == stage * STEP
    raw["doc_ids"] = list(item_order(SEED, OF)[:n])
    raw["material"] = {**raw["material"], "stages": {"seed": SEED, "step": STEP}}
    raw["key"] = key_of(raw["material"])
    raw["stages"] = StageInfo(seed=SEED, step=STEP, stage=stage, of=OF, stopped=stopped, why=why).model_dump()
    raw.pop("checksum", None)
    return CellRecord.model_validate(raw)


def cells(rng, ft_rouge_hi: float, stage: int = 2):
    """A sentiment fine-tune on a summary set (finding 4a, ~0 ROUGE-L) and the base on it (read by no part),
    after `stage` stages of 100 items."""
    f = ft("sentiment", "builtin_products")
    n = stage * STEP
    return [staged(record("summary", "builtin_sports", "in", f, rouge=rng.uniform(0, ft_rouge_hi, n)), stage),
            staged(record("summary", "builtin_sports", "in", None, rouge=rng.uniform(0, 0.5, n)), stage)]


def test_a_cell_stops_once_every_part_reading_it_is_decided(tmp_path):
    rng = np.random.default_rng(0)
    tuned, base = roundtrip(tmp_path, cells(rng, 0.01))
    by = {r.finetune is not None: r for r in (tuned, base)}
    stop = make_decide()([tuned, base])
    assert stop[by[True].key].startswith("4a holds")  # ROUGE-L ~0.005 on 200 of 500 items: below 0.05 for sure
    assert stop[by[False].key] == "read by no finding part"
    # the same cell near the ~0 level: 200 items cannot decide, it runs on
    tuned, base = roundtrip(tmp_path, cells(np.random.default_rng(0), 0.1))  # mean 0.05: the level itself
    assert (tuned if tuned.finetune else base).key not in make_decide()([tuned, base])
    # a cell stopped by a decision is named again while its part stays decided, and not once it is undecided
    rng = np.random.default_rng(0)
    tuned, base = cells(rng, 0.01)
    stopped = staged(record("summary", "builtin_sports", "in", tuned.finetune, rouge=tuned.items["rougeL"]), 2,
                     stopped="decided", why="4a holds")
    stopped, base = roundtrip(tmp_path, [stopped, base])
    assert make_decide()([stopped, base])[stopped.key].startswith("4a holds")
    undone = staged(record("summary", "builtin_sports", "in", tuned.finetune, rouge=rng.uniform(0, 0.1, 200)), 2,
                    stopped="decided", why="4a holds")
    undone, base = roundtrip(tmp_path, [undone, base])
    assert undone.key not in make_decide()([undone, base])


def test_a_part_whose_cells_stopped_on_a_decision_is_judged_on_its_confidence_sequence(tmp_path):
    rng = np.random.default_rng(0)
    tuned, base = cells(rng, 0.01)
    tuned = staged(record("summary", "builtin_sports", "in", tuned.finetune, rouge=tuned.items["rougeL"]), 2,
                   stopped="decided", why="4a holds")
    s = SuiteData("s", roundtrip(tmp_path, [tuned, base]))
    part = next(f for f in findings(s) if f.num == 4).parts[0]
    assert part.verdict == "holds [anytime-valid: staged evaluation]"
    assert "anytime-valid pooled bounds" in part.counts
    lo, hi = (float(x) for x in part.counts.split("anytime-valid pooled bounds [")[1].split("]")[0].split(", "))
    assert -1 <= lo < hi < 0  # in units of the 0.05 level above it: the mean lies below 0.05
    # unstaged records keep the bootstrap verdict and say nothing of sequences
    plain = [record("summary", "builtin_sports", "in", tuned.finetune, rouge=tuned.items["rougeL"])]
    part = next(f for f in findings(SuiteData("s", roundtrip(tmp_path, plain))) if f.num == 4).parts[0]
    assert part.verdict == "holds" and part.anytime is None


def test_the_stop_rule_keeps_its_error_rate_under_a_true_null():
    """A part of 3 comparisons whose true pooled effect is exactly at its boundary (ROUGE-L mean 0.05, the ~0
    level): stopping at the first stage whose sequences decide must err in at most alpha of the runs."""
    from genft.report.anytime import pooled_bounds
    from genft.report.judging import _pooled_verdict
    from genft.report.model import Comp
    from genft.report.stats import Estimate

    class Cond:
        def __init__(self, values):
            self.metric = "rougeL"
            self.cells = [type("R", (), {"doc_ids": list(range(len(values))), "items": {"rougeL": list(values)},
                                         "stages": StageInfo(seed=0, step=50, stage=1, of=OF, stopped=None),
                                         "limit": None, "key": "k"})()]

    rng = np.random.default_rng(1)
    wrong = 0
    runs = 60
    for _ in range(runs):
        pops = [rng.permutation(np.r_[np.zeros(450), np.full(50, 0.5)]) for _ in range(3)]  # mean exactly 0.05
        for n in range(50, OF + 1, 50):
            comps = [Comp(0, 0, Estimate(0, 0, 0, n, 1, np.zeros(1)), conds=(Cond(p[:n]),), kind="value")
                     for p in pops]
            lo, hi = pooled_bounds(comps, [0.05] * 3, [0.05] * 3, 0.05)
            v = _pooled_verdict("near_zero", lo, hi)
            if v in ("holds", "does not hold"):
                wrong += 1  # neither is true: the mean is at the level itself
                break
    assert wrong / runs <= 0.05


def test_staged_comparisons_that_disagree_in_sign_leave_the_part_mixed(tmp_path):
    """Finding 4c on a summary fine-tune (it took effect: ROUGE-L 0.5 vs 0.1 in-domain) that is far better than
    the base on one classification set and far worse on the other: the confidence sequences put one comparison
    above zero and one below, so the part is mixed, whatever its pooled bounds, on the report's verdict and on
    the stop decision alike (its cells run on)."""
    f = ft("summary", "builtin_sports")
    n, half = 2 * STEP, [1, 0] * STEP
    recs = [staged(record("summary", "builtin_sports", "in", f, rouge=[0.5] * n), 2, "decided", "x"),
            staged(record("summary", "builtin_sports", "in", None, rouge=[0.1] * n), 2, "decided", "x"),
            staged(record("sentiment", "builtin_products", "in", f, correct=[1] * n), 2, "decided", "x"),
            staged(record("sentiment", "builtin_products", "in", None, correct=half), 2, "decided", "x"),
            staged(record("sentiment", "builtin_restaurants", "out", f, correct=[0] * n), 2, "decided", "x"),
            staged(record("sentiment", "builtin_restaurants", "out", None, correct=half), 2, "decided", "x")]
    recs = roundtrip(tmp_path, recs)
    part = next(f for f in findings(SuiteData("s", recs)) if f.num == 4).parts[2]
    assert part.name.startswith("c:")
    assert part.verdict == "inconclusive (mixed: comparisons significantly disagree in sign) [anytime-valid: staged " \
                           "evaluation]", part.verdict
    assert "1 comparisons' bounds above and 1 below zero" in part.counts
    decide = make_decide()(recs)
    assert not any(r.key in decide for r in recs if r.task == "sentiment")  # 4c reads them: they run on


def test_a_limit_does_not_shrink_the_population_the_sequences_bound(tmp_path):
    """A cell that reached its limit (200 of a 500-item test set) still holds a sample of the test set: its
    sequence is not the exact mean of the 200 items it holds (zero width), and it is as wide as that of an
    unlimited cell at the same items."""
    from genft.report import anytime

    rng = np.random.default_rng(0)
    f = ft("sentiment", "builtin_products")
    tuned = record("sentiment", "builtin_products", "in", f, correct=list(rng.integers(0, 2, 200)))
    base = record("sentiment", "builtin_products", "in", None, correct=list(rng.integers(0, 2, 200)))

    def width(limit):
        recs = []
        for r in (tuned, base):
            raw = staged(r, 2).model_dump(mode="json")
            raw["limit"], raw["material"]["limit"] = limit, limit
            raw["stages"]["stopped"] = "limit" if limit else None
            raw["key"] = key_of(raw["material"])
            raw.pop("checksum", None)
            recs.append(CellRecord.model_validate(raw))
        s = SuiteData("s", roundtrip(tmp_path, recs))
        g = next(g for g in s.groups.values() if not g.is_base)
        comp = s.compare(s.cond(g, ("sentiment", "builtin_products"), 1, 0),
                         s.cond(s.base_group(g.base), ("sentiment", "builtin_products"), 1, 0))
        assert anytime.population(comp) == OF
        lo, hi = anytime.bounds(comp, 0.0, 1.0, 0.05)
        return hi - lo

    assert width(200) == width(None) > 0.2
