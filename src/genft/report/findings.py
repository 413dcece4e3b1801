"""The study's findings (STUDY.md §5), each judged from the cells by the study's own comparison.

The rules (`RULES`, stated in the report) follow STUDY.md §7: a part is judged on its pooled effect over its
informative comparisons, with the individual comparisons' consistency beside it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import anytime
from .diagnostics import same_output_share
from .model import Comp, Group, SuiteData, TestSet, fmt, task_kind
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
            bad = [g for g in (e.groups or [e.group]) if not g.is_base and not s.effect(g).took]
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
        part.verdict = f"{INCONCLUSIVE} (mixed: comparisons significantly disagree in sign)"
    else:
        part.verdict = _pooled_verdict(part.claim, est.lo, est.hi)
    comps = [e.comp for e in used]
    b = anytime.pooled_bounds(comps, offsets, units, st.alpha)  # None unless every comparison is staged
    if b is not None:
        part.anytime = _pooled_verdict(part.claim, *b)
        if anytime.stopped_early(comps):  # cells stopped on a decision: the verdict rests on the sequences
            part.verdict = part.anytime + " [anytime-valid: staged evaluation]"
            part.counts += f"; anytime-valid pooled bounds [{b[0]:+.2f}, {b[1]:+.2f}] {part.unit}"
    return part


def _judge_steps(part: Part, s: SuiteData) -> Part:
    """Training size: classify each step, then each series (a model line on one test set), then the part."""
    st = s.settings
    left = [e for e in part.evidence if e.degenerate]
    vacuous = []
    for e in part.evidence:
        bad = [g for g in e.groups if not e.degenerate and not s.effect(g).took]
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


FINDINGS: list[Callable[[SuiteData], Finding]] = []


def finding(fn: Callable[[SuiteData], Finding]) -> Callable[[SuiteData], Finding]:
    """Register a finding (in the order of STUDY.md §5)."""
    FINDINGS.append(fn)
    return fn


def findings(s: SuiteData) -> list[Finding]:
    out = []
    for fn in FINDINGS:
        f = fn(s)
        for p in f.parts:
            judge_part(p, s)
        f.verdict = combine(f.parts)
        out.append(f)
    return out


def margin_of(s: SuiteData, metric: str, reference: float) -> float:
    return s.settings.margin(metric).of(reference)


def _evidence(s: SuiteData, g: Group, ts: TestSet, what: str, comp: Comp | None) -> Evidence | None:
    if comp is None:
        return None
    return Evidence(g, ts, what, comp, margin_of(s, s.conds_of(g, ts, any_demos=True)[0].metric, comp.reference))


def _best(s: SuiteData, a_conds: list, b_conds: list) -> Comp:
    """max over a's conditions − max over b's, with the selection repeated in every resample."""
    conds = a_conds + b_conds
    k = len(a_conds)
    arms, outs = s.arms(conds)
    est = s.evaluate(conds, lambda m: m[:, :k].max(axis=1) - m[:, k:].max(axis=1))
    means = [float(a.values.mean()) for a in arms]
    ia = int(np.argmax(means[:k]))
    ib = k + int(np.argmax(means[k:]))
    return Comp(means[ia], means[ib], est, same_output_share(outs[ia], outs[ib]),
                s.degenerate([conds[ia], conds[ib]], [outs[ia], outs[ib]]), means[ib],
                s.collapse([conds[ia], conds[ib]]), tuple(conds), "best")


@finding
def finding_in_domain(s: SuiteData) -> Finding:
    """(1) Plain FT at 0-shot vs the base model's best k-shot (k > 0, best chosen on the test set inside each
    resample), Prompt-1, first-k demos, in-domain sets; sentiment (the study's stated exception) not judged."""
    part = Part("a: FT 0-shot above the base's best with demos", "greater", [])
    for base in s.bases:
        bg = s.base_group(base)
        for g in s.ft_groups(base):
            for ts in s.test_sets:
                if ts.task != g.task or ts.domain != "in" or ts.task == "sentiment":
                    continue
                ft0 = s.cond(g, ts, 1, 0)
                demos = [c for c in s.conds_of(bg, ts, 1) if c.shots > 0]
                if ft0 is None or not demos:
                    continue
                comp = _best(s, [ft0], demos)
                e = _evidence(s, g, ts, f"FT 0-shot − base best of {', '.join(str(c.shots) for c in demos)}-shot",
                              comp)
                part.evidence.append(e)
    return Finding(1, "In-domain: fine-tuned at 0-shot vs the base model with demonstrations",
                   "Fine-tuned models at 0-shot beat the base model with demonstrations in-domain (XLSum, SocialIQA, "
                   "MNLI, PAWS); sentiment is the exception.", [part], HEADERS,
                   "The base model's shot count is chosen on the test set, inside every resample (the interval "
                   "carries the selection); sentiment in-domain is the study's stated exception and is not judged.")


@finding
def finding_train_size(s: SuiteData) -> Finding:
    """(2) Step by step over training sizes, as the study states it (2K -> 4K, 4K -> 6K, or the suite's
    sizes): each step's gain at 0-shot, Prompt-1, first-k demos, on the in-domain sets.  "More is not reliably
    better" is supported by a step whose gain lies below the margin and contradicted by a series whose every
    step gains."""
    part = Part("a: more data is not reliably better (some step gains nothing)", "not_greater", [])
    for base in s.bases:
        for gs in s.series(base):
            for ts in s.test_sets:
                if ts.task != gs[0].task or ts.domain != "in":
                    continue
                pts = [(g, c) for g in gs if (c := s.cond(g, ts, 1, 0)) is not None]
                for (g0, c0), (g1, c1) in zip(pts, pts[1:]):
                    comp = s.compare(c1, c0)
                    part.evidence.append(Evidence(
                        g1, ts, f"step {g0.size} → {g1.size}: {c1.score:.3f} − {c0.score:.3f}", comp,
                        margin_of(s, c0.metric, comp.reference), series=(gs[0].key, ts.name),
                        groups=[g0, g1]))
    return Finding(2, "Training size", "More training data is not reliably better (PAWS 81.6% at 2K -> 93.2% at "
                   "4K; 4K -> 6K flat or worse).", [part], HEADERS,
                   "Judged step by step over each series (recipes equal but for the training size): a = the larger "
                   "size, b = the smaller; a step supports the claim when its gain lies below the margin "
                   "(one-sided, Holm over the steps), contradicts it when its gain is above zero.")


def _vs_base_part(s: SuiteData, name: str, claim: str, pick: Callable[[Group, TestSet], bool],
                  prompt: int = 1) -> Part:
    part = Part(name, claim, [])
    for base in s.bases:
        for g in s.ft_groups(base):
            for ts in s.test_sets:
                if not pick(g, ts):
                    continue
                for c in s.conds_of(g, ts, prompt, any_demos=True):
                    demo = "" if c.demo_seed is None else f", demo seed {c.demo_seed}"
                    e = _evidence(s, g, ts, f"FT − base, {c.shots}-shot P{prompt}{demo}", s.vs_base(c))
                    if e is not None:
                        part.evidence.append(e)
    return part


@finding
def finding_out_of_domain(s: SuiteData) -> Finding:
    """(3) Own task, out-of-domain sets, Prompt-1, every shot count (the study's "at every shot count"),
    FT − base at the same shots: generation-tuned below (less), classification-tuned on par or better."""
    parts = [_vs_base_part(s, "a: generation-tuned below base", "less",
                           lambda g, ts: ts.task == g.task and ts.domain == "out" and ts.kind == "generation"),
             _vs_base_part(s, "b: classification-tuned on par or better", "not_less",
                           lambda g, ts: ts.task == g.task and ts.domain == "out" and ts.kind == "classification")]
    return Finding(3, "Out-of-domain", "Generation-tuned models fall below the base model out-of-domain at every "
                   "shot count; classification-tuned models are on par (sentiment) or better (paraphrase, NLI).",
                   parts, HEADERS)


@finding
def finding_cross_task(s: SuiteData) -> Finding:
    """(4) a: classification-tuned models on generation sets (Prompt-1): ROUGE-L below the near-zero level;
    b: Prompt-2 − Prompt-1 for them (greater); c: generation-tuned on classification sets, FT − base."""
    pa = Part("a: classification-tuned ~0 ROUGE-L on generation", "near_zero", [])
    pb = Part("b: Prompt-2 partly restores them", "greater", [])
    for base in s.bases:
        for g in s.ft_groups(base):
            if task_kind(g.task) != "classification":
                continue
            for ts in s.test_sets:
                if ts.kind != "generation":
                    continue
                for c in s.conds_of(g, ts, 1, any_demos=True):
                    est = s.evaluate([c], lambda m: m[:, 0])
                    pa.evidence.append(Evidence(g, ts, f"ROUGE-L, {c.shots}-shot P1 (~0: below "
                                                       f"{s.settings.near_zero})",
                                                Comp(est.value, float("nan"), est, conds=(c,), kind="value")))
                    e = _evidence(s, g, ts, f"Prompt-2 − Prompt-1, {c.shots}-shot",
                                  s.compare(s.cond(g, ts, 2, c.shots, c.demo_seed), c))
                    if e is not None:
                        pb.evidence.append(e)
    pc = _vs_base_part(s, "c: generation tuning does not hurt classification", "not_less",
                       lambda g, ts: task_kind(g.task) == "generation" and ts.kind == "classification")
    return Finding(4, "Cross-task", "Classification-tuned models score ~0 ROUGE-L on generation (output-space "
                   "specialisation); Prompt-2 partly restores them. Generation tuning rarely hurts classification.",
                   [pa, pb, pc], HEADERS)


@finding
def finding_fticl(s: SuiteData) -> Finding:
    """(5) FTICL vs plain FT (same visible settings), the study's comparison: the best over shot counts of each
    (chosen on the test set, inside every resample), per test set and prompt.  a: generation in-domain,
    not_less; b: generation out-of-domain and cross-task, greater; c: classification in-domain, less."""
    parts = {"a": Part("a: generation FTICL keeps in-domain", "not_less", []),
             "b": Part("b: generation FTICL better OOD / cross-task", "greater", []),
             "c": Part("c: classification FTICL worse in-domain", "less", [])}
    for base in s.bases:
        for g in s.ft_groups(base, plain=False):
            plain = s.plain_match(g)
            if plain is None:
                continue
            gen = task_kind(g.task) == "generation"
            for ts in s.test_sets:
                own_in = ts.task == g.task and ts.domain == "in"
                key = "a" if gen and own_in else "b" if gen else "c" if own_in else None
                if key is None:
                    continue
                for prompt in s.prompts():
                    mine = s.conds_of(g, ts, prompt)
                    shots = sorted({c.shots for c in mine} & {c.shots for c in s.conds_of(plain, ts, prompt)})
                    if not shots:
                        continue
                    comp = _best(s, [s.cond(g, ts, prompt, k) for k in shots],
                                 [s.cond(plain, ts, prompt, k) for k in shots])
                    e = _evidence(s, g, ts, f"best FTICL − best FT ({plain.label}) over {shots}-shot P{prompt}",
                                  comp)
                    e.groups = [g, plain]
                    parts[key].evidence.append(e)
    return Finding(5, "FTICL", "FTICL on generation: in-domain kept, out-of-domain and cross-task better than plain "
                   "fine-tuning. FTICL on classification: worse than plain fine-tuning in-domain.",
                   list(parts.values()), HEADERS,
                   "The study's comparison: the best result over shot counts of each model, chosen on the test set "
                   "(the selection is repeated inside every resample).")


def run_table(s: SuiteData) -> list[dict]:
    """One row per fine-tuned run: its settings, weight deviation and training numbers."""
    out = {}
    for c in s.cells:
        ft = c.finetune
        if ft is None or ft.run in out:
            continue
        man = s.manifests.get(ft.run) or {}
        train = man.get("training") if isinstance(man.get("training"), dict) else {}
        trunc = man.get("truncation") if isinstance(man.get("truncation"), dict) else {}
        out[ft.run] = {"run": ft.run, "group": s.group_of(c), "ft": ft, "wd": ft.weight_deviation,
                       "wall": train.get("wall_time_s"), "tps": train.get("tokens_per_s"),
                       "trunc": {k: v for k, v in trunc.items()  # the counts of what was cut
                                 if isinstance(v, (int, float)) and ("cut" in k or "drop" in k)}}
    return sorted(out.values(), key=lambda r: (r["group"].sort_key(), r["ft"].seed, r["run"]))


@finding
def finding_weight_deviation(s: SuiteData) -> Finding:
    """(6) Each FTICL run vs the plain FT run with the same settings and seed: FTICL < FT, with a stated
    tolerance on the ratio (one deterministic number per checkpoint, no interval)."""
    tol = s.settings.weight_tolerance
    part = Part("a: FTICL moves the weights less", "less", [])
    runs = run_table(s)
    for r in runs:
        g = r["group"]
        if g.is_plain or r["wd"] is None:
            continue
        plain = s.plain_match(g)
        match = [p for p in runs if plain is not None and p["group"] is plain and p["ft"].seed == r["ft"].seed
                 and p["wd"]]
        if not match:
            continue
        p = match[0]
        ratio = r["wd"] / p["wd"]
        cls = SUPPORTS if ratio < 1 - tol else CONTRADICTS if ratio > 1 + tol else NO_DIFFERENCE
        part.evidence.append(Evidence(g, None, "", None, fixed=cls, cells=[
            r["run"], p["run"], f"{r['wd']:.3e}", f"{p['wd']:.3e}", f"{ratio:.3f}"]))
    return Finding(6, "Weight deviation", "FTICL moves the weights less than plain fine-tuning (mean |Δw| 7.95e-5 "
                   "vs 8.54e-5 on SocialIQA, 8.03e-5 vs 1.0e-4 on XSum).", [part],
                   ["part", "FTICL run", "FT run", "FTICL mean |Δw|", "FT mean |Δw|", "ratio", "class"],
                   f"One deterministic number per checkpoint, no interval: a ratio FTICL / FT below {1 - tol:g} "
                   f"supports, above {1 + tol:g} contradicts, in between is equal within the ±{tol:.0%} tolerance "
                   f"(no difference).")
