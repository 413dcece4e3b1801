"""Markdown sections around the tables: header and provenance, findings, checkpoints, labels and output
diagnostics, the appendix."""
from __future__ import annotations

from ..metrics import PRED, PREDFIRST
from ..prompts import TARGET_DELIMITER
from . import diagnostics
from .findings import run_table
from .judging import NOT_MEASURED, RULES, Finding, row
from .markdown import human_s, join, many, table, uniq
from .model import SuiteData, fmt, task_kind


def section_header(s: SuiteData) -> list[str]:
    """The title and how to read the tables, then provenance, settings, test sets and models."""
    return _intro(s) + _provenance(s) + _settings(s) + _test_sets(s) + _models(s)


def _intro(s: SuiteData) -> list[str]:
    """The title and the paragraph on how to read the tables' cells and marks."""
    st = s.settings
    lines = [f"# genft report: {s.name}", ""]
    lines.append(
        f"{len(s.cells)} evaluation cells, {len(s.conds)} conditions, {len(s.groups) - len(s.bases)} fine-tuned "
        f"model groups on {len(s.bases)} base model(s). Primary metric: `acc_first` for classification (the "
        f"study's rule: the label whose first token is most probable at the first generated position) and ROUGE-L F "
        f"for generation, on a 0-1 scale. Fine-tuned cells read `score (change vs base [95% CI])`: the change is "
        f"against the base model at the same shots, prompt and demonstrations; the interval is a bootstrap over the "
        f"same test items ({st.n_resamples} resamples, seed {st.seed}, percentile interval), which for a model with "
        f"several fine-tuning seeds resamples the seeds first (marked `(k seeds)`); an interval without that mark "
        f"rests on one seed and carries the item variance only. ▲ / ▼ mark intervals that exclude zero; ≡ marks "
        f"arms with the same output on every item (generations compared after removing punctuation and folding "
        f"white space) and ⚠ arms that all answer one label at or below the majority rate (both: no information); "
        f"⊘ marks a kept comparison in which one arm collapsed to one label.")
    lines.append("")
    return lines


def _provenance(s: SuiteData) -> list[str]:
    """What produced the cells: data protocol, models, versions, device, seeds, wall times."""
    prov = [c.provenance for c in s.cells]
    runs = run_table(s)
    walls = [float(r["wall"]) for r in runs if r["wall"] is not None]
    times = sorted(p.time for p in prov)
    demo_seeds = uniq(c.demo_seed for c in s.cells)
    rows = [
        ["suite", s.name],
        ["data protocol", join(c.protocol for c in s.cells) + " (clean: defective items dropped and counted; "
                          "study: the study's first 250 items, defective items kept and scored wrong)"],
        ["base models", join(s.bases)],
        ["fine-tuned runs", str(len(runs))],
        ["genft", join(p.genft for p in prov)],
        ["lm-eval", join(p.lm_eval for p in prov)],
        ["torch", join(p.torch for p in prov)],
        ["transformers", join(p.transformers for p in prov)],
        ["backend", join(p.backend for p in prov)],
        ["batch size", join(p.batch_size for p in prov)],
        ["device", join(p.device for p in prov)],
        ["dtype", join(p.dtype for p in prov)],
        ["host", join(p.hostname for p in prov)],
        ["harness hash", many(p.harness_hash for p in prov)],
        ["evaluated", f"{times[0]} – {times[-1]}" if times else "—"],
        ["fine-tuning seeds", join(sorted(uniq(c.finetune.seed for c in s.cells if c.finetune)))],
        ["demonstration seeds", join(demo_seeds) if demo_seeds else "none (the study's fixed first-k demos)"],
        ["wall time: fine-tuning", f"{human_s(sum(walls))} (sum over {len(walls)} of {len(runs)} runs with a "
                                   f"manifest)" if walls else "— (no training manifests)"],
        ["wall time: evaluation", f"{human_s(sum(c.wall_s for c in s.cells))} (sum over {len(s.cells)} cells)"],
    ]
    return ["## Provenance", "", table(rows, ["", "value"]), ""]


def _settings(s: SuiteData) -> list[str]:
    """How the cells were evaluated and judged: delimiter, limit, prompts, shots, margins, floors."""
    st = s.settings
    prov = [c.provenance for c in s.cells]
    delims = uniq(p.target_delimiter for p in prov)
    margins = "; ".join(f"{m}: {mg.text()}" for m, mg in sorted(st.margins.items()))
    settings = [
        ["target delimiter", ", ".join(repr(d) for d in delims) if delims else repr(TARGET_DELIMITER)],
        ["limit (first N test items)", join(c.limit if c.limit is not None else "all" for c in s.cells)],
        ["prompts evaluated", join(f"Prompt-{p}" for p in s.prompts())],
        ["shots", join(sorted({c.shots for c in s.cells}))],
        ["equivalence margins", margins],
        ["floor (one label)", f"one label on ≥ {st.one_label_share:.0%} of the items, at or below the majority "
                              f"rate"],
        ["~0 ROUGE-L", f"below {st.near_zero}"],
        ["weight-deviation tolerance", f"ratio within 1 ± {st.weight_tolerance}"],
        ["α per finding part", f"{st.alpha} (pooled {1 - st.alpha:.0%} interval; Holm over the individual "
                               f"comparisons)"],
    ]
    return ["## Settings", "", table(settings, ["", "value"]), ""]


def _test_sets(s: SuiteData) -> list[str]:
    """One row per test set: domain, kind, items, majority rate, data hash."""
    data_rows = []
    for ts in s.test_sets:
        cs = [c for c in s.cells if c.task == ts.task and c.dataset == ts.dataset]
        hashes = uniq(c.provenance.data_sha256 for c in cs)
        majority = uniq(c.majority_rate for c in cs)
        data_rows.append([ts.name, ts.domain, ts.kind, join(c.n for c in cs),
                          join(fmt(m) for m in majority) if majority else "—",
                          ", ".join(hashes) + (" ⚠ differs between cells" if len(hashes) > 1 else "")])
    return ["### Test sets", "", table(data_rows, ["test set", "domain", "kind", "n items", "majority rate",
                                                  "data sha256"]), ""]


def _models(s: SuiteData) -> list[str]:
    """One row per model (recipe), with whether each fine-tuned one took effect in-domain."""
    model_rows, no_effect = [], []
    for g in s.ordered_groups:
        if g.is_base:
            model_rows.append([g.label, g.base, "— (base model)", "", "", "", "", join(g.runs), "", ""])
        else:
            eff = s.effect(g)
            if not eff.took:
                no_effect.append(g.label)
            model_rows.append([g.label, g.base, f"{g.task}/{g.dataset}", str(g.size), g.method,
                               f"{g.icl} ({g.ft.icl_demos or 'fixed'})" if g.icl else "0 (plain)",
                               join(g.seeds), join(g.runs), g.key[2][:12], ("" if eff.took else "⚠ ") + eff.text()])
    took = (f"{len(no_effect)} of {len(s.groups) - len(s.bases)} fine-tuned models did not take effect (or were "
            f"not checked) in-domain: {', '.join(no_effect)}; their comparisons cannot support an \"on par / does "
            f"not hurt\" claim." if no_effect else "Every fine-tuned model took effect in-domain.")
    return ["### Models", "", "One row per recipe: runs with the same recipe hash but for the seed "
            "(`replicate_hash`) are replicates; nothing else is averaged. *In-domain check*: the model against "
            "its base on its own training set's test set (Prompt-1, first-k demonstrations, 0 shots or its FTICL "
            "shot count); it took effect when the change exceeds the margin and its interval lies above zero.",
            "", took, "",
            table(model_rows, ["model", "base", "fine-tuned on", "train size", "method", "FTICL demos", "seeds",
                               "runs", "replicate hash", "in-domain check"]), ""]


def section_findings(s: SuiteData, fs: list[Finding]) -> list[str]:
    lines = ["## Findings of the study vs this suite", "",
             "Each finding of docs/study.md §5 is checked by a registered function over the cells "
             "(genft.report.findings), with the study's own comparison.", ""]
    lines += [f"- {rule}" for rule in RULES] + [""]
    summary = [[str(f.num), f.title, f.verdict, "; ".join(f"{p.name}: {p.verdict} ({p.counts})" for p in f.parts)]
               for f in fs]
    lines += [table(summary, ["#", "finding", "verdict", "evidence"]), ""]
    for f in fs:
        lines += [f"### {f.num}. {f.title}: {f.verdict}", "", f"Study: {f.claim}", ""]
        if f.note:
            lines += [f.note, ""]
        for p in f.parts:
            lines.append(f"- {p.name}: **{p.verdict}** ({p.counts})")
        lines.append("")
        rows = [row(p, e) for p in f.parts for e in p.evidence]
        if rows:
            lines += [table(rows, f.headers), ""]
        elif f.verdict == NOT_MEASURED:
            lines += ["The cells this finding needs are not in this suite.", ""]
    return lines


def section_weights(s: SuiteData) -> list[str]:
    lines = ["## Fine-tuned checkpoints: weight deviation and training", "",
             "Weight deviation: the mean absolute parameter difference from the base model over all parameters "
             "(docs/study.md §4). Training time, speed and truncation counts come from the training manifest.", ""]
    rows = []
    for r in run_table(s):
        ft = r["ft"]
        trunc = ", ".join(f"{k} {v}" for k, v in sorted(r["trunc"].items())) or "—"
        rows.append([r["run"], r["group"].label, f"{ft.task}/{ft.dataset}", str(ft.effective_size), ft.method,
                     str(ft.icl_shots), str(ft.seed), f"{r['wd']:.3e}" if r["wd"] is not None else "—",
                     human_s(r["wall"]) if r["wall"] is not None else "—",
                     fmt(float(r["tps"]), 1) if r["tps"] is not None else "—", trunc])
    if rows:
        return lines + [table(rows, ["run", "model", "trained on", "size", "method", "FTICL k", "seed", "mean |Δw|",
                                     "train wall", "tokens/s", "truncation"]), ""]
    return lines + ["Not measured in this suite: no fine-tuned models.", ""]


def _flag(c, share: float) -> str:
    top = diagnostics.top_label([c])
    return f"⚠ {top[0]} {top[1]:.0%}" if top and top[1] >= share else ""


def section_labels(s: SuiteData) -> list[str]:
    share = s.settings.one_label_share
    lines = ["## Classification: predicted labels vs accuracy", "",
             f"Per cell: accuracy under the study's first-token rule (`acc_first`) and the full-label rule (`acc`), "
             f"the majority-class rate of the test items (the floor a constant answer reaches), and the share of "
             f"items given each label. ⚠ marks a model answering one label (first-token rule) for ≥ {share:.0%} of "
             f"the items.", ""]
    rows, flagged = [], 0
    for c in s.cells:
        if task_kind(c.task) != "classification":
            continue
        flag = _flag(c, share)
        flagged += bool(flag)
        g = s.group_of(c)
        seed = f" (seed {c.finetune.seed})" if c.finetune and len(g.seeds) > 1 else ""
        first = diagnostics.label_distribution(c, PREDFIRST)
        full = diagnostics.label_distribution(c, PRED)
        rows.append([g.label + seed, f"{c.task}/{c.dataset}", f"P{c.prompt}", str(c.shots),
                     "—" if c.demo_seed is None else str(c.demo_seed), str(c.n), fmt(c.metrics.get("acc_first")),
                     fmt(c.metrics.get("acc")), fmt(c.majority_rate),
                     ", ".join(f"{k} {v:.2f}" for k, v in first.items()) or "—",
                     ", ".join(f"{k} {v:.2f}" for k, v in full.items()) or "—", flag])
    if not rows:
        return lines + ["Not measured in this suite: no classification cells.", ""]
    lines += [f"{flagged} of {len(rows)} classification cells answer one label for ≥ {share:.0%} of the items.", ""]
    warn = []
    for ts in s.test_sets:
        never = diagnostics.never_first([c for c in s.cells if c.task == ts.task and c.dataset == ts.dataset])
        if never:
            warn.append(f"⚠ {ts.name}: the first-token rule never picks {', '.join(repr(x) for x in never)} in any "
                        f"cell while the full-label rule does: two labels may share their first token (the rule "
                        f"then always picks the earlier label).")
    return lines + warn + ([""] if warn else []) + [
        table(rows, ["model", "test set", "prompt", "shots", "demo seed", "n", "acc_first", "acc", "majority",
                     "predicted (first token)", "predicted (full label)", "flag"]), ""]


def section_generations(s: SuiteData) -> list[str]:
    """Per generation cell: the share of items repeating one output, and per fine-tuned cell the share of items
    with the same output as the base model (same shots, prompt, demonstrations)."""
    lines = ["## Generation: repeated, empty, copied and identical outputs", "",
             "Outputs are compared as scored (stripped, cut at the first blank line) and normalized (punctuation "
             "removed, white space folded). Per generation cell: *repeated* = the share of items whose output is "
             "the cell's most frequent output, when that occurs on two or more items (a model repeating one text, "
             "typically a demonstration's target, for different inputs); *empty* = the share of empty outputs; "
             "*copies a demo* = the share of items whose output is the target of one of its demonstrations (cells "
             "with the study's first-k demonstrations; — at 0 shots and for random demonstrations); *same as base* "
             "= the share of items on which a fine-tuned model's output equals the base model's.", ""]
    rows = []
    for c in s.cells:
        if task_kind(c.task) != "generation":
            continue
        cond = s.cond(s.group_of(c), (c.task, c.dataset), c.prompt, c.shots, c.demo_seed)
        comp = s.vs_base(cond)
        seed = f" (seed {c.finetune.seed})" if c.finetune and len(s.group_of(c).seeds) > 1 else ""
        rows.append([s.group_of(c).label + seed, f"{c.task}/{c.dataset}", f"P{c.prompt}", str(c.shots),
                     fmt(c.score), fmt(diagnostics.repeated_share(c), 2), fmt(diagnostics.empty_share(c), 2),
                     fmt(diagnostics.demo_copy_share(c), 2), fmt(comp.same_outputs, 2) if comp is not None else "—"])
    if not rows:
        return lines + ["Not measured in this suite: no generation cells.", ""]
    return lines + [table(rows, ["model", "test set", "prompt", "shots", "ROUGE-L", "repeated", "empty",
                                 "copies a demo", "same as base"]), ""]


def section_appendix(s: SuiteData) -> list[str]:
    lines = ["## Appendix: every cell", "",
             "All metrics of every evaluation cell (classification: `acc_first` = first-token rule, `acc` = full-label "
             "log-likelihood rule, `acc_norm` = length-normalised; generation: ROUGE F).", ""]
    rows = []
    for c in s.cells:
        m = c.metrics
        rows.append([s.group_of(c).label, str(c.finetune.seed) if c.finetune else "—", f"{c.task}/{c.dataset}",
                     c.domain, f"P{c.prompt}", str(c.shots), "—" if c.demo_seed is None else str(c.demo_seed),
                     str(c.n), fmt(m.get("acc_first")), fmt(m.get("acc")), fmt(m.get("acc_norm")),
                     fmt(m.get("rougeL")), fmt(m.get("rouge1")), fmt(m.get("rouge2")), fmt(c.wall_s, 1)])
    return lines + [table(rows, ["model", "FT seed", "test set", "domain", "prompt", "shots", "demo seed", "n",
                                 "acc_first", "acc", "acc_norm", "rougeL", "rouge1", "rouge2", "wall s"]), ""]
