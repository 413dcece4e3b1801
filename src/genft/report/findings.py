"""The study's findings (STUDY.md §5), each judged from the cells by the study's own comparison.

The rules (`RULES`, stated in the report) follow STUDY.md §7.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .diagnostics import one_label, same_output_share
from .model import Comp, Group, SuiteData, TestSet, fmt, task_kind
from .stats import Estimate, holm

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive"
NOT_MEASURED = "not measured in this suite"

SUPPORTS, CONTRADICTS, NO_DIFFERENCE, UNDETERMINED, DEGENERATE = (
    "supports", "contradicts", "no difference", "undetermined", "degenerate")

RULES = [
    "A degenerate comparison (identical outputs on every item, or an arm answering one label at or below the "
    "majority rate) is shown, marked and left out of the vote; each part says how many were left out and why.",
    "Each comparison is tested with bootstrap p-values against its claim; the p-values of one part are adjusted "
    "for multiplicity with Holm's method. A comparison shows *no difference* when its equivalence test (the "
    "difference lies inside ±margin, two one-sided tests) is significant after adjustment, else *supports* the "
    "claim when its support test is, *contradicts* it when the opposite test is, and is *undetermined* "
    "otherwise.",
    "\"No difference\" never supports a directional claim (higher / lower): it counts against it. It supports an "
    "\"on par or better\" claim (non-inferiority: the difference lies above −margin).",
    "A part holds when more than half of its used comparisons support it, does not hold when more than half "
    "contradict it or (for a directional claim) show no difference, and is inconclusive otherwise; a finding "
    "holds when every part holds and does not hold when any part does not.",
    "Intervals with one fine-tuning seed carry the item variance only (column *variance*); with two or more "
    "they resample the seeds, then the items.",
]

# claim -> (support test, contradiction test, equivalence test); a test is (side, threshold) where the
# threshold is "0", "m" (the margin), "-m" or "z" (the near-zero level): "above 0" = the statistic exceeds 0.
CLAIMS = {
    "greater": (("above", "0"), ("below", "0"), "tost"),
    "less": (("below", "0"), ("above", "0"), "tost"),
    "not_less": (("above", "-m"), ("below", "-m"), None),  # on par or better: non-inferiority
    "not_greater": (("below", "m"), ("above", "0"), None),  # not reliably better (a trend)
    "near_zero": (("below", "z"), ("above", "z"), None),
}


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


def judge_part(part: Part, s: SuiteData) -> Part:
    """Test each used comparison, adjust with Holm, classify, vote."""
    st = s.settings
    support_t, against_t, equiv = CLAIMS[part.claim]
    used = [e for e in part.evidence if not e.degenerate and e.fixed is None and e.comp is not None]
    fixed = [e for e in part.evidence if e.fixed is not None]
    left = [e for e in part.evidence if e.degenerate]
    if used:
        ps = [_p(e.comp.est, support_t, e.margin, st.near_zero) for e in used]
        pa = [_p(e.comp.est, against_t, e.margin, st.near_zero) for e in used]
        pe = [max(e.comp.est.p_above(-e.margin), e.comp.est.p_below(e.margin)) for e in used] if equiv else None
        ps, pa = holm(ps), holm(pa)
        pe = holm(pe) if pe else None
        for i, e in enumerate(used):
            e.p = ps[i]
            if pe is not None and pe[i] < st.alpha:
                e.verdict_class = NO_DIFFERENCE  # inside ±margin: negligible, even where it excludes zero
            elif ps[i] < st.alpha:
                e.verdict_class = SUPPORTS
            elif pa[i] < st.alpha:
                e.verdict_class = CONTRADICTS
            else:
                e.verdict_class = UNDETERMINED
    for e in fixed:
        e.verdict_class = e.fixed
    for e in left:
        e.verdict_class = DEGENERATE
    voting = used + fixed
    n = len(voting)
    c = Counter(e.verdict_class for e in voting)
    directional = part.claim in ("greater", "less")
    against = c[CONTRADICTS] + (c[NO_DIFFERENCE] if directional else 0)
    support = c[SUPPORTS] + (0 if directional else c[NO_DIFFERENCE])
    why_left = Counter(e.degenerate.split(":")[0] for e in left)
    left_text = (f"; left out {len(left)} degenerate (" + ", ".join(f"{k} {v}" for k, v in sorted(why_left.items()))
                 + ")") if left else ""
    adj = f", Holm-adjusted over {len(used)}" if len(used) > 1 else ""
    part.counts = (f"used {n} of {len(part.evidence)} comparisons{adj}: {c[SUPPORTS]} support, {c[CONTRADICTS]} "
                   f"contradict, {c[NO_DIFFERENCE]} no difference, {c[UNDETERMINED]} undetermined{left_text}")
    if not part.evidence:
        part.verdict, part.counts = NOT_MEASURED, "no comparisons"
    elif n == 0:
        part.verdict = f"{INCONCLUSIVE} (every comparison degenerate)"
    elif 2 * support > n:
        part.verdict = HOLDS
    elif 2 * against > n:
        part.verdict = DOES_NOT_HOLD
    else:
        wide = c[UNDETERMINED]
        part.verdict = f"{INCONCLUSIVE} ({'intervals too wide' if wide >= max(support, against) else 'mixed results'})"
    return part


def combine(parts: list[Part]) -> str:
    verdicts = [p.verdict for p in parts]
    if all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    if any(v == DOES_NOT_HOLD for v in verdicts):
        return DOES_NOT_HOLD
    if all(v == HOLDS for v in verdicts):
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


def row(part: Part, e: Evidence) -> list[str]:
    if e.cells is not None:
        return [part.name.split(":")[0]] + e.cells + [e.verdict_class]
    c = e.comp
    cls = e.verdict_class if not e.degenerate else f"degenerate: {e.degenerate} (left out)"
    return [part.name.split(":")[0], e.group.label, e.ts.name if e.ts else "", e.what, fmt(c.a), fmt(c.b), c.text(),
            c.est.variance_text, fmt(c.same_outputs, 2) if c.same_outputs is not None else "—",
            "—" if np.isnan(e.p) else f"{e.p:.3f}", cls]


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
                s.degenerate([conds[ia], conds[ib]], [outs[ia], outs[ib]]), means[ib])


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
    """(2) A trend over training sizes: the least-squares slope of the score on log2(size), per doubling,
    0-shot Prompt-1 first-k demos, in-domain sets.  "More is not reliably better" is supported when the slope
    lies below the margin per doubling, contradicted when it lies above zero."""
    part = Part("a: no reliable gain per doubling of the training data", "not_greater", [])
    for base in s.bases:
        for gs in s.series(base):
            for ts in s.test_sets:
                if ts.task != gs[0].task or ts.domain != "in":
                    continue
                pts = [(g, c) for g in gs if (c := s.cond(g, ts, 1, 0)) is not None]
                if len(pts) < 2:
                    continue
                kept = [(g, c) for g, c in pts if not one_label(c.cells, s.settings.one_label_share)]
                use = kept if len(kept) >= 2 else pts
                conds = [c for _, c in use]
                x = np.log2([g.size for g, _ in use])
                w = (x - x.mean()) / float(((x - x.mean()) ** 2).sum())
                est = s.evaluate(conds, lambda m, w=w: m @ w)
                arms, outs = s.arms(conds)
                means = [float(a.values.mean()) for a in arms]
                dropped = [g.label for g, c in pts if (g, c) not in kept]
                if len(kept) < 2:
                    why = f"one label: {', '.join(dropped)} answer one label, fewer than two sizes left"
                else:
                    why = s.degenerate(conds, outs)
                steps = " → ".join(f"{g.size}: {m:.3f}" for (g, _), m in zip(use, means))
                note = f"; {', '.join(dropped)} left out (one label)" if dropped and len(kept) >= 2 else ""
                comp = Comp(means[0], means[-1], est, None, why, float(np.mean(means)))
                e = Evidence(gs[-1], ts, f"slope per doubling ({steps}){note}", comp,
                             margin_of(s, conds[0].metric, comp.reference))
                part.evidence.append(e)
    return Finding(2, "Training size", "More training data is not reliably better (PAWS 81.6% at 2K -> 93.2% at "
                   "4K; 4K -> 6K flat or worse).", [part], HEADERS,
                   "Judged as a trend: the slope of the score on log2(training size) per doubling, over every size "
                   "of a series (recipes equal but for the size); a = smallest size, b = largest; margin per "
                   "doubling as for the metric.")


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
                                                Comp(est.value, float("nan"), est)))
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
