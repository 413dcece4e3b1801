"""The study's findings (docs/study.md §5), each built from the cells by the study's own comparison and judged by
the rules of `judging` (a part on its pooled effect over its informative comparisons, with the individual
comparisons' consistency beside it)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .diagnostics import same_output_share
from .judging import CONTRADICTS, HEADERS, NO_DIFFERENCE, SUPPORTS, Evidence, Finding, Part, combine, judge_part
from .model import Comp, Group, SuiteData, TestSet, task_kind

FINDINGS: list[Callable[[SuiteData], Finding]] = []


def finding(fn: Callable[[SuiteData], Finding]) -> Callable[[SuiteData], Finding]:
    """Register a finding (in the order of docs/study.md §5)."""
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


def _evidence(s: SuiteData, g: Group, ts: TestSet, what: str, comp: Comp | None) -> Evidence | None:
    if comp is None:
        return None
    return Evidence(g, ts, what, comp, s.margin(s.conds_of(g, ts, any_demos=True)[0].metric, comp.reference))


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
                        s.margin(c0.metric, comp.reference), series=(gs[0].key, ts.name),
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
        facts = s.manifests.get(ft.run) or {}  # (genft.training.training_facts: what was cut, time and speed)
        train = facts.get("training") or {}
        out[ft.run] = {"run": ft.run, "group": s.group_of(c), "ft": ft, "wd": ft.weight_deviation,
                       "wall": train.get("wall_time_s"), "tps": train.get("tokens_per_s"),
                       "trunc": dict(facts.get("truncation") or {})}
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
