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
