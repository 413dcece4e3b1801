"""The study's transfer tables: settings 1-3, FTICL, seeds, best over shots, training size."""
from __future__ import annotations

from .markdown import join, not_measured, table
from .model import TASK_ORDER, SuiteData, fmt
from .stats import seed_interval


def _base_title(s: SuiteData, base: str) -> str:
    return f" — base {base}" if len(s.bases) > 1 else ""


def _col(k: int, demo_seed: int | None) -> str:
    return f"{k}-shot" + ("" if demo_seed is None else f" (demo seed {demo_seed})")


def _tasks(s: SuiteData) -> list[str]:
    return TASK_ORDER + sorted({t.task for t in s.test_sets} - set(TASK_ORDER))


def section_same_task(s: SuiteData, domain: str) -> list[str]:
    num, what = (1, "in-domain") if domain == "in" else (2, "out-of-domain")
    lines = [f"## Setting {num}: same task, {what}", "",
             "Rows: the base model and the models fine-tuned (plain) on the task, by training size; columns: test "
             "set × shots (× demonstration seed where the demonstrations are drawn at random).", ""]
    any_table = False
    for base in s.bases:
        bg = s.base_group(base)
        for task in _tasks(s):
            sets = [ts for ts in s.test_sets if ts.task == task and ts.domain == domain]
            groups = ([bg] if bg else []) + s.ft_groups(base, task)
            if not sets:
                continue
            for prompt in s.prompts():
                cols = [(ts, k, d) for ts in sets for k, d in s.columns(ts, prompt, groups)]
                rows = []
                for g in groups:
                    cells = [s.cell_text(s.cond(g, ts, prompt, k, d)) for ts, k, d in cols]
                    if any(c != "—" for c in cells):
                        rows.append([g.label] + cells)
                if not rows:
                    continue
                any_table = True
                lines += [f"### {task}, Prompt-{prompt}{_base_title(s, base)}", "",
                          table(rows, ["model"] + [f"{ts.dataset} {_col(k, d)}" for ts, k, d in cols]), ""]
    return not_measured(lines, any_table)


def section_cross_task(s: SuiteData) -> list[str]:
    lines = ["## Setting 3: cross-task", "",
             "Rows: models fine-tuned (plain) on each task; columns: the test sets of the other tasks (· = the "
             "model's own task, see Settings 1-2). One table per prompt, shot count and demonstrations.", ""]
    any_table = False
    for base in s.bases:
        bg = s.base_group(base)
        groups = s.ft_groups(base)
        keys = {g.key: g for g in groups}
        for prompt in s.prompts():
            cols = sorted({(k[4], k[5]) for k in s.conds if k[3] == prompt and k[0] in keys and k[1] != keys[k[0]].task},
                          key=lambda x: (x[0], -1 if x[1] is None else x[1]))
            for k, d in cols:
                sets = [ts for ts in s.test_sets if any(
                    g.task != ts.task and s.cond(g, ts, prompt, k, d) is not None for g in groups)]
                rows = []
                if bg:
                    rows.append([bg.label] + [fmt(getattr(s.cond(bg, ts, prompt, k, d), "score", None)) for ts in sets])
                for g in groups:
                    row = ["·" if ts.task == g.task else s.cell_text(s.cond(g, ts, prompt, k, d)) for ts in sets]
                    if any(x not in ("·", "—") for x in row):
                        rows.append([g.label] + row)
                any_table = True
                lines += [f"### Prompt-{prompt}, {_col(k, d)}{_base_title(s, base)}", "",
                          table(rows, ["model"] + [ts.name for ts in sets]), ""]
    return not_measured(lines, any_table)


def section_fticl(s: SuiteData) -> list[str]:
    lines = ["## FTICL: fine-tuning with in-context demonstrations", "",
             "For each FTICL model (k demonstrations in every training prompt): the base model with k demos, plain "
             "fine-tuning with the same settings, and FTICL, on Prompt-1. `FTICL 0-shot` shows the change vs plain FT "
             "at 0-shot; `FTICL k-shot` the change vs the base model at k-shot.", ""]
    any_table = False
    for base in s.bases:
        bg = s.base_group(base)
        for g in s.ft_groups(base, plain=False):
            plain = s.plain_match(g)
            k = g.icl
            rows = []
            for ts in s.test_sets:
                if not s.conds_of(g, ts, 1):
                    continue
                setting = ("cross-task" if ts.task != g.task
                           else {"in": "in-domain", "out": "out-of-domain"}.get(ts.domain, ts.domain))
                f0, p0 = s.cond(g, ts, 1, 0), s.cond(plain, ts, 1, 0)
                fk, bk = s.cond(g, ts, 1, k), s.cond(bg, ts, 1, k)
                c0, ck = s.compare(f0, p0), s.compare(fk, bk)
                rows.append([ts.name, setting, fmt(getattr(bk, "score", None)), s.cell_text(p0),
                             f"{fmt(f0.score)} ({c0.text()})" if c0 else (fmt(f0.score) if f0 else "—"),
                             f"{fmt(fk.score)} ({ck.text()})" if ck else (fmt(fk.score) if fk else "—")])
            if not rows:
                continue
            any_table = True
            lines += [f"### {g.label} (plain FT: {plain.label if plain else 'none'}){_base_title(s, base)}", "",
                      table(rows, ["test set", "setting", f"base {k}-shot", "FT 0-shot (vs base)",
                                   "FTICL 0-shot (vs FT)", f"FTICL {k}-shot (vs base {k}-shot)"]), ""]
    return not_measured(lines, any_table)


def section_seeds(s: SuiteData) -> list[str]:
    lines = ["## Seeds", "",
             "Conditions with more than one fine-tuning seed (true replicates: the same recipe hash but for the "
             "seed). Interval: mean ± t(0.975, n−1)·sd/√n over the replicate scores (sample sd); min–max alongside. "
             "The comparisons above resample these seeds, then the items.", ""]
    rows = []
    order = {(ts.task, ts.dataset): i for i, ts in enumerate(s.test_sets)}
    for key in sorted(s.conds, key=lambda k: (s.groups[k[0]].sort_key(), order[k[1], k[2]], k[3], k[4],
                                               -1 if k[5] is None else k[5])):
        c = s.conds[key]
        if len(c.cells) < 2:
            continue
        agg = seed_interval([x.score for x in c.cells])
        interval = (f"[{fmt(agg['lo'])}, {fmt(agg['hi'])}]" if agg["sd"] > 0 else
                    "— (equal scores: the seed variance is not measurable from these seeds)")
        rows.append([c.group.label, f"{c.task}/{c.dataset}", f"P{c.prompt}", str(c.shots), c.demos, str(agg["n"]),
                     join(c.seeds), c.metric, fmt(agg["mean"]), interval, f"{fmt(agg['min'])}–{fmt(agg['max'])}"])
    if rows:
        return lines + [table(rows, ["model", "test set", "prompt", "shots", "demos", "replicates", "FT seeds",
                                     "metric", "mean", "95% t-interval", "min–max"]), ""]
    return lines + ["Not measured in this suite: every condition has one replicate.", ""]


def section_best_over_shots(s: SuiteData) -> list[str]:
    lines = ["## Best over shots (selected on the test set)", "",
             "The study's view for its FTICL figures: for each model and test set the best Prompt-1 score over the "
             "shot counts, with the shot count that gave it. **The shot count is chosen on the test set itself**, so "
             "these numbers are optimistic; the tables above compare at fixed shots.", ""]
    any_table = False
    for base in s.bases:
        for task in _tasks(s):
            sets = [ts for ts in s.test_sets if ts.task == task]
            rows = []
            for g in [x for x in s.ordered_groups if x.base == base]:
                cells = []
                for ts in sets:
                    cs = s.conds_of(g, ts, 1)
                    best = max(cs, key=lambda c: (c.score, -c.shots)) if cs else None
                    cells.append(f"{fmt(best.score)} (k={best.shots})" if best else "—")
                if any(c != "—" for c in cells):
                    rows.append([g.label] + cells)
            if rows:
                any_table = True
                lines += [f"### {task} test sets{_base_title(s, base)}", "",
                          table(rows, ["model"] + [ts.dataset for ts in sets]), ""]
    return not_measured(lines, any_table)


def section_train_size(s: SuiteData, figure: str | None) -> list[str]:
    lines = ["## Training size", "",
             "Plain fine-tuning at 0-shot, Prompt-1: score (change vs base) per training size, on the training "
             "task's test sets.", ""]
    any_table = False
    for base in s.bases:
        bg = s.base_group(base)
        for task in TASK_ORDER:
            groups = s.ft_groups(base, task)
            if not groups:
                continue
            rows = []
            for ts in [ts for ts in s.test_sets if ts.task == task]:
                cells = [s.cell_text(s.cond(g, ts, 1, 0)) for g in groups]
                if any(c != "—" for c in cells):
                    rows.append([ts.dataset, ts.domain, fmt(getattr(s.cond(bg, ts, 1, 0), "score", None))] + cells)
            if rows:
                any_table = True
                lines += [f"### {task}{_base_title(s, base)}", "",
                          table(rows, ["test set", "domain", "base"] + [g.label for g in groups]), ""]
    lines = not_measured(lines, any_table)
    return lines + ([f"![training-size curves]({figure})", ""] if figure else [])
