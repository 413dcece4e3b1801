"""How a finding part is judged (the report's rules, `RULES`): each comparison's class (one-sided tests, Holm over
the part), the pooled effect in margin units with its interval, sign consistency, comparisons with no
information or vacuous ones left out, training size step by step, and anytime-valid verdicts where staged
cells stopped on a decision.  The finding functions that build the parts are in `findings`."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import anytime
from .model import Comp, Group, SuiteData, TestSet, fmt
from .stats import Estimate, holm, pooled

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive"
NOT_MEASURED = "not measured in this suite"

SUPPORTS, CONTRADICTS, NO_DIFFERENCE, UNDETERMINED, DEGENERATE, VACUOUS = (
    "supports", "contradicts", "no difference", "undetermined", "no information", "vacuous")

RULES = [
    "A comparison carries no information only when every arm sits at the floor (answers one label on nearly "
    "every item, at or below the majority rate) or the arms give the same output on every item (generations "
    "compared after removing punctuation and folding white space); it is shown, marked (⚠ / ≡) and left out. "
    "A fine-tuned model that collapsed to one label while the other arm did not is kept: the collapse is the "
    "outcome (marked ⊘).",
    "A fine-tune must take effect: each fine-tuned model's in-domain check (Models table) compares it with its "
    "base on its own training set's test set; it took effect when the change exceeds the margin and its interval "
    "lies above zero. Comparisons of a model that did not take effect (or was not checked) cannot support an "
    "\"on par / does not hurt\" claim: they are shown, counted as *vacuous* and left out of it.",
    "A part is judged on its pooled effect: the mean over its informative comparisons of each difference in "
    "units of its own equivalence margin (for \"~0 ROUGE-L\": the score minus the ~0 level, in units of that "
    "level), with a 95% interval from a bootstrap that resamples seeds, then items within each test set, paired "
    "across arms and comparisons. A directional claim (higher / lower) holds when the pooled interval lies on "
    "its side of zero and not inside ±1 margin; it does not hold when the interval lies on the other side, or "
    "inside ±1 margin (no difference never supports a direction). \"On par or better\" holds when the interval "
    "lies above −1 margin and does not hold when it lies below. Otherwise the part is inconclusive.",
    "Consistency: each comparison has its own interval and class (supports, contradicts, no difference, "
    "undetermined) from one-sided tests, Holm-adjusted over the part. p-values use the normal approximation with "
    "the bootstrap standard error, so they can survive Holm over hundreds of comparisons. A part whose "
    "comparisons significantly disagree in sign (after Holm) is *mixed*, not decided, whatever its pooled effect.",
    "Training size is judged step by step, as the study states it (each size to the next): a step *supports* "
    "\"more is not reliably better\" when its gain lies below the margin, *contradicts* it when the gain is "
    "above zero (Holm over the steps); a series supports the claim when some step supports it and contradicts "
    "it when every step does; the part holds when some series supports and none contradicts. A step between "
    "fine-tunes that did not both take effect is vacuous (no gain between unchanged models is automatic).",
    "Intervals with one fine-tuning seed carry the item variance only (column *variance*); with two or more "
    "they resample the seeds, then the items.",
]

# claim -> (support test, contradiction test, equivalence test); a test is (side, threshold) where the
# threshold is "0", "m" (the margin), "-m" or "z" (the near-zero level): "above 0" = the statistic exceeds 0.
CLAIMS = {
    "greater": (("above", "0"), ("below", "0"), "tost"),
    "less": (("below", "0"), ("above", "0"), "tost"),
    "not_less": (("above", "-m"), ("below", "-m"), None),  # on par or better: non-inferiority
    "not_greater": (("below", "m"), ("above", "0"), None),  # a step that is not reliably better
    "near_zero": (("below", "z"), ("above", "z"), None),
}
ON_PAR = ("not_less",)  # claims a fine-tune that did not take effect supports vacuously
VACUOUS_WITHOUT_EFFECT = ON_PAR + ("not_greater",)  # and training-size steps ("no gain" between unchanged models)
MIXED = f"{INCONCLUSIVE} (mixed: comparisons significantly disagree in sign)"


def not_taken(e, took: Callable[[Group], bool]) -> list[Group]:
    """The fine-tuned models behind a comparison that did not take effect (`took`: the in-domain check, or
    what a pilot run of the same recipe showed)."""
    return [g for g in (e.groups or [e.group]) if not g.is_base and not took(g)]


@dataclass
class Evidence:
    """One comparison of a part: its row in the finding's table and its test outcome."""

    group: Group
    ts: TestSet | None
    what: str
    comp: Comp | None
    margin: float = float("nan")
    verdict_class: str = UNDETERMINED
    p: float = float("nan")
    fixed: str | None = None  # a class decided without a test (deterministic numbers)
    cells: list | None = None  # table cells instead of the default comparison columns
    groups: list = field(default_factory=list)  # the fine-tuned groups it depends on (default: [group])
    series: tuple | None = None  # training size: the series (model line, test set) a step belongs to
    vacuous: str | None = None

    @property
    def degenerate(self) -> str | None:
        return self.comp.degenerate if self.comp is not None else None


@dataclass
class Part:
    name: str
    claim: str
    evidence: list
    verdict: str = NOT_MEASURED
    counts: str = "no comparisons"
    pooled: Estimate | None = None
    unit: str = "margins"
    anytime: str | None = None  # the verdict from confidence sequences, where every comparison is staged


@dataclass
class Finding:
    num: int
    title: str
    claim: str
    parts: list
    headers: list
    note: str = ""
    verdict: str = NOT_MEASURED


def _threshold(code: str, margin: float, near_zero: float) -> float:
    return {"0": 0.0, "m": margin, "-m": -margin, "z": near_zero}[code]


def _p(est: Estimate, test: tuple, margin: float, near_zero: float) -> float:
    side, code = test
    x = _threshold(code, margin, near_zero)
    return est.p_above(x) if side == "above" else est.p_below(x)


def _classify(part: Part, used: list, st) -> None:
    """Each used comparison's class and the p of the test that decided it (Holm over the part)."""
    support_t, against_t, equiv = CLAIMS[part.claim]
    ps = holm([_p(e.comp.est, support_t, e.margin, st.near_zero) for e in used])
    pa = holm([_p(e.comp.est, against_t, e.margin, st.near_zero) for e in used])
    pe = holm([max(e.comp.est.p_above(-e.margin), e.comp.est.p_below(e.margin)) for e in used]) if equiv else None
    for i, e in enumerate(used):
        if pe is not None and pe[i] < st.alpha:
            e.verdict_class, e.p = NO_DIFFERENCE, pe[i]  # inside ±margin: negligible, even where it excludes zero
        elif ps[i] < st.alpha:
            e.verdict_class, e.p = SUPPORTS, ps[i]
        elif pa[i] < st.alpha:
            e.verdict_class, e.p = CONTRADICTS, pa[i]
        else:
            e.verdict_class, e.p = UNDETERMINED, ps[i]


def _left_text(left: list, vacuous: list) -> str:
    out = ""
    if left:
        why = Counter(e.degenerate.split(":")[0] for e in left)
        out += f"; left out {len(left)} with no information (" + ", ".join(
            f"{k} {v}" for k, v in sorted(why.items())) + ")"
    if vacuous:
        out += f"; {len(vacuous)} vacuous (a fine-tune that did not take effect: its parity is automatic)"
    return out


def _pooled_verdict(claim: str, lo: float, hi: float) -> str:
    if claim in ("greater", "less"):
        if lo > -1 and hi < 1:
            return f"{DOES_NOT_HOLD} (no difference: pooled interval inside ±1 margin)"
        if (lo > 0) if claim == "greater" else (hi < 0):
            return HOLDS
        if (hi < 0) if claim == "greater" else (lo > 0):
            return DOES_NOT_HOLD
    elif claim == "not_less":
        if lo > -1:
            return HOLDS
        if hi < -1:
            return DOES_NOT_HOLD
    elif claim == "near_zero":
        if hi < 0:
            return HOLDS
        if lo > 0:
            return DOES_NOT_HOLD
    return f"{INCONCLUSIVE} (pooled interval too wide)"


def judge_part(part: Part, s: SuiteData) -> Part:
    """Classify each comparison, pool the informative ones, and judge the part (or, for training-size steps,
    its series)."""
    st = s.settings
    if part.claim == "not_greater":
        return _judge_steps(part, s)
    fixed = [e for e in part.evidence if e.fixed is not None]
    left = [e for e in part.evidence if e.fixed is None and (e.comp is None or e.degenerate)]
    rest = [e for e in part.evidence if e.fixed is None and e.comp is not None and not e.degenerate]
    vacuous = []
    if part.claim in ON_PAR:
        for e in rest:
            bad = not_taken(e, lambda g: s.effect(g).took)
            if bad:
                e.vacuous = "; ".join(f"{g.label}: {s.effect(g).status}" for g in bad)
                vacuous.append(e)
    used = [e for e in rest if e.vacuous is None]
    for e in fixed:
        e.verdict_class = e.fixed
    for e in left:
        e.verdict_class = DEGENERATE
    for e in vacuous:
        e.verdict_class = VACUOUS
    if used:
        _classify(part, used, st)
    if not part.evidence:
        part.verdict, part.counts = NOT_MEASURED, "no comparisons"
        return part
    if fixed:  # deterministic numbers (weight deviation): a vote, no interval
        c = Counter(e.verdict_class for e in fixed)
        directional = part.claim in ("greater", "less")
        against = c[CONTRADICTS] + (c[NO_DIFFERENCE] if directional else 0)
        support = c[SUPPORTS] + (0 if directional else c[NO_DIFFERENCE])
        part.counts = (f"{len(fixed)} deterministic comparisons: {c[SUPPORTS]} support, {c[CONTRADICTS]} "
                       f"contradict, {c[NO_DIFFERENCE]} no difference")
        part.verdict = HOLDS if 2 * support > len(fixed) else DOES_NOT_HOLD if 2 * against > len(fixed) else \
            f"{INCONCLUSIVE} (split)"
        return part
    extra = _left_text(left, vacuous)
    if not used:
        part.counts = f"no informative comparison of {len(part.evidence)}{extra}"
        part.verdict = f"{INCONCLUSIVE} (no informative comparison)"
        return part
    near = part.claim == "near_zero"
    offsets = [st.near_zero if near else 0.0 for _ in used]
    units = [st.near_zero if near else e.margin for e in used]
    if any(not (u > 0) for u in units):
        raise ValueError(f"{part.name}: a comparison has no positive margin ({units})")
    part.unit = f"units of the ~0 level ({st.near_zero:g}) above it" if near else "margins"
    part.pooled = est = pooled([e.comp.est for e in used], offsets, units, alpha=st.alpha)
    pos = holm([e.comp.est.p_above(o) for e, o in zip(used, offsets)])
    neg = holm([e.comp.est.p_below(o) for e, o in zip(used, offsets)])
    n_pos, n_neg = sum(p < st.alpha for p in pos), sum(p < st.alpha for p in neg)
    c = Counter(e.verdict_class for e in used)
    seeds = f", {est.replicates} seeds" if est.replicates > 1 else ""
    adj = f"Holm over {len(used)}" if len(used) > 1 else "one comparison"
    part.counts = (f"pooled {est.value:+.2f} [{est.lo:+.2f}, {est.hi:+.2f}] {part.unit} over {len(used)} of "
                   f"{len(part.evidence)} comparisons{seeds}; individually ({adj}): {c[SUPPORTS]} support, "
                   f"{c[CONTRADICTS]} contradict, {c[NO_DIFFERENCE]} no difference, {c[UNDETERMINED]} undetermined"
                   f"; {n_pos} significantly above and {n_neg} below {'the ~0 level' if near else 'zero'}{extra}")
    if n_pos and n_neg:
        part.verdict = MIXED
    else:
        part.verdict = _pooled_verdict(part.claim, est.lo, est.hi)
    comps = [e.comp for e in used]
    each = anytime.each_bounds(comps, offsets, units, st.alpha)  # None unless every comparison is staged
    if each is not None:
        b = anytime.mean_bounds(each)
        up, down = anytime.disagree(each)
        # the same two rules as above, on the sequences: comparisons that disagree in sign leave the part mixed
        part.anytime = MIXED if up and down else _pooled_verdict(part.claim, *b)
        if anytime.stopped_early(comps):  # cells stopped on a decision: the verdict rests on the sequences
            part.verdict = part.anytime + " [anytime-valid: staged evaluation]"
            part.counts += (f"; anytime-valid pooled bounds [{b[0]:+.2f}, {b[1]:+.2f}] {part.unit}, {up} "
                            f"comparisons' bounds above and {down} below {'the ~0 level' if near else 'zero'}")
    return part


def _judge_steps(part: Part, s: SuiteData) -> Part:
    """Training size: classify each step, then each series (a model line on one test set), then the part."""
    st = s.settings
    left = [e for e in part.evidence if e.degenerate]
    vacuous = []
    for e in part.evidence:
        bad = [] if e.degenerate else not_taken(e, lambda g: s.effect(g).took)
        if bad:  # "no gain" between fine-tunes that did not take effect is automatic
            e.vacuous = "; ".join(f"{g.label}: {s.effect(g).status}" for g in bad)
            e.verdict_class = VACUOUS
            vacuous.append(e)
    used = [e for e in part.evidence if not e.degenerate and e.vacuous is None]
    for e in left:
        e.verdict_class = DEGENERATE
    if used:
        _classify(part, used, st)
    seq = {id(e): anytime.bounds(e.comp, 0.0, e.margin, st.alpha / len(used)) for e in used}
    seq_classes = None if not used or any(b is None for b in seq.values()) else {
        k: SUPPORTS if b[1] < 1 else CONTRADICTS if b[0] > 0 else UNDETERMINED for k, b in seq.items()}
    staged = seq_classes is not None and anytime.stopped_early([e.comp for e in used])
    if staged:  # cells stopped on a decision: each step's class rests on its confidence sequence
        for e in used:
            e.verdict_class = seq_classes[id(e)]
    if not part.evidence:
        part.verdict, part.counts = NOT_MEASURED, "no comparisons"
        return part
    by: dict[tuple, list] = {}
    for e in part.evidence:
        by.setdefault(e.series, []).append(e)
    sup, con, open_ = _series_counts(by, used, {id(e): e.verdict_class for e in used})
    if seq_classes is not None:
        part.anytime = series_verdict(*_series_counts(by, used, seq_classes)[:2], True)
    c = Counter(e.verdict_class for e in used)
    part.counts = (f"{len(by)} series, {len(part.evidence)} steps (Holm over {len(used)}): {c[SUPPORTS]} steps "
                   f"without a reliable gain, {c[CONTRADICTS]} with a gain, {c[UNDETERMINED]} undetermined; series: "
                   f"{sup} support, {con} contradict, {open_} open{_left_text(left, vacuous)}")
    part.verdict = series_verdict(sup, con, bool(used))
    if staged:
        part.verdict += " [anytime-valid: staged evaluation]"
    return part


def _series_counts(by: dict, used: list, classes: dict) -> tuple[int, int, int]:
    """(supporting, contradicting, open) series: a series supports when some used step supports, contradicts
    when every step is used and contradicts."""
    sup = con = open_ = 0
    for steps in by.values():
        mine = [classes[id(e)] for e in steps if e in used]
        if SUPPORTS in mine:
            sup += 1
        elif mine and len(mine) == len(steps) and all(c == CONTRADICTS for c in mine):
            con += 1
        else:
            open_ += 1
    return sup, con, open_


def series_verdict(sup: int, con: int, any_used: bool) -> str:
    """Training size: the part's verdict from its series' (supporting, contradicting) counts."""
    if sup and con:
        return f"{INCONCLUSIVE} (mixed: series disagree)"
    if sup:
        return HOLDS
    if con:
        return DOES_NOT_HOLD
    return f"{INCONCLUSIVE} ({'no informative step' if not any_used else 'intervals too wide'})"


def combine(parts: list[Part]) -> str:
    verdicts = [p.verdict for p in parts]
    if all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    if any(v.startswith(DOES_NOT_HOLD) for v in verdicts):
        return DOES_NOT_HOLD
    if all(v.startswith(HOLDS) for v in verdicts):
        return HOLDS
    missing = [p.name.split(":")[0] for p in parts if p.verdict == NOT_MEASURED]
    open_ = [p.name.split(":")[0] for p in parts if p.verdict.startswith(INCONCLUSIVE)]
    why = []
    if open_:
        why.append("part " + ", ".join(open_) + " open")
    if missing:
        why.append("cells missing: part " + ", ".join(missing))
    return f"{INCONCLUSIVE} ({'; '.join(why)})"


HEADERS = ["part", "model", "test set", "comparison", "a", "b", "a − b [95% CI]", "variance", "same outputs",
           "p (Holm)", "class"]


def fmt_p(p: float) -> str:
    """A p-value for a table: 3 decimals, small ones in scientific notation (never a bare 0.000)."""
    if np.isnan(p):
        return "—"
    if p == 0.0:
        return "< 1e-300"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def row(part: Part, e: Evidence) -> list[str]:
    if e.cells is not None:
        return [part.name.split(":")[0]] + e.cells + [e.verdict_class]
    c = e.comp
    if e.degenerate:
        cls = f"no information: {e.degenerate} (left out)"
    elif e.vacuous:
        cls = f"vacuous: {e.vacuous} (left out)"
    else:
        cls = e.verdict_class + (f"; kept: {c.note}" if c.note else "")
    return [part.name.split(":")[0], e.group.label, e.ts.name if e.ts else "", e.what, fmt(c.a), fmt(c.b), c.text(),
            c.est.variance_text, fmt(c.same_outputs, 2) if c.same_outputs is not None else "—",
            "—" if e.degenerate or e.vacuous else fmt_p(e.p), cls]
