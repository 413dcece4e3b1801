"""Power planning: before any compute is spent, how precisely each finding part of a suite can be judged.

1. *Structure*: the suite is planned (`suite.observe.read_plan`: no model loaded, nothing written) and every planned
   cell becomes a placeholder record (random answers on a few items; fine-tuned models as their runs will
   record them), so the report's own finding functions list the comparisons each part would make.  The
   placeholders assume what the plan cannot know: that no comparison will lack information (no arm at the
   floor, no identical outputs) and that every fine-tune takes effect, except a recipe whose pilot run did not
   (the same replicate hash in the pilot evidence): its "on par" comparisons and training-size steps are left
   out as the report would leave them out (`pilot_effects`); the report later leaves out what else does not
   hold.
2. *Variance*: each comparison's per-item variance in units of its margin (`u`: the squared standard error
   times the items, over the squared margin) comes from a pilot evidence file (the median over the same part's
   informative comparisons of that metric, else of the metric's comparisons in any part) or from stated
   defaults (`DEFAULT_UNIT_VARIANCE`).
3. *Precision*: a part's pooled effect is the mean of its M comparisons, so its standard error is
   sqrt(sum u_c / n_c) / M (comparisons treated as independent; comparisons on one test set share items and
   can be correlated) and its 95% half-width 1.96 times that.  A part is *decidable* when the half-width is at
   most `TARGET_HALF_WIDTH` margins: then a pooled effect of 0 is shown inside ±1 margin, and one of 1 margin
   shown above zero, each with at least 80% power (1.96·se + 1.28·se <= 1 and 1.96·se <= 1 - 1.96·se).  The
   items per cell that would make it decidable scale with the square of the half-width.  Training-size steps
   are judged one by one: their half-width is a single step's, with the Holm-adjusted normal quantile.

The variance is the item-to-item variance; with several fine-tuning seeds the seed-to-seed variance adds to it
and does not shrink with more items (a pilot with several seeds carries it in its `u`).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ..files import sha256_json
from ..metrics import GOLD, PRED, PREDFIRST, label_metric
from ..prompts import get_task
from ..suite import planning
from ..suite.observe import read_plan, test_count
from ..suite.spec import Suite
from ..suite.store import CellRecord, CheckpointInfo, FinetuneInfo, Provenance, key_of
from ..suite.report_settings import ReportSettings
from ..training import OPERATIONAL
from .evidence import read_evidence
from .findings import FINDINGS
from .judging import VACUOUS_WITHOUT_EFFECT, Part, judge_part, not_taken
from .markdown import table
from .model import SuiteData

TARGET_HALF_WIDTH = 0.6  # margins: see the module docstring
PLACEHOLDER_ITEMS = 24  # items per placeholder record (the structure does not depend on it)
# Per-item variance of one comparison in units of its margin, when no pilot says otherwise:
# classification: a paired accuracy difference with the arms disagreeing on about a quarter of the items
#   (variance ~0.25) over a margin of 0.05 -> 100;
# generation: a paired ROUGE-L difference with a per-item sd of ~0.12 over a margin of 20% of ~0.15 -> 16;
# ~0 ROUGE-L: a per-item sd of ~0.08 over the ~0 level of 0.05 -> 2.6.
DEFAULT_UNIT_VARIANCE = {"classification": 100.0, "generation": 16.0, "near_zero": 2.6}


@dataclass(frozen=True)
class PartPower:
    key: str  # "1a"
    name: str
    comparisons: int
    items: int  # median items per comparison at the planned size
    half_width: float  # of the pooled effect (or of one step), in margins
    detectable: float  # the smallest pooled effect detected with 80% power, in margins
    source: str  # where the variances came from
    decidable: bool
    items_needed: int | None  # per cell, for the target half-width
    test_set_items: int | None  # the most items its test sets hold (None: unknown)


def _kind(part: Part, e) -> str:
    if part.claim == "near_zero":
        return "near_zero"
    return get_task(e.ts.task).kind if e.ts is not None else "classification"


def read_pilot(path: str | Path, settings: ReportSettings | None = None) -> SuiteData:
    """A pilot evidence file, read once for its variances and its models' in-domain checks."""
    name, records, runs, stored = read_evidence(path)
    return SuiteData(name, records, runs, settings or stored)


def pilot_variances(pilot: str | Path | SuiteData, settings: ReportSettings | None = None) -> dict[tuple, float]:
    """{(part key, kind): median u, (None, kind): median u over every part} from a pilot evidence file."""
    s = pilot if isinstance(pilot, SuiteData) else read_pilot(pilot, settings)
    by: dict[tuple, list[float]] = defaultdict(list)
    for fn in FINDINGS:
        f = fn(s)
        for p in f.parts:
            judge_part(p, s)
            for e in p.evidence:
                if e.comp is None or e.degenerate or e.vacuous or e.fixed is not None:
                    continue
                unit = s.settings.near_zero if p.claim == "near_zero" else e.margin
                u = e.comp.est.se ** 2 * e.comp.n / unit ** 2
                if np.isfinite(u) and u > 0:
                    kind = _kind(p, e)
                    by[(f"{f.num}{p.name[0]}", kind)].append(u)
                    by[(None, kind)].append(u)
    return {k: statistics.median(v) for k, v in by.items()}


def pilot_effects(pilot: str | Path | SuiteData, settings: ReportSettings | None = None) -> dict[str, bool]:
    """{replicate hash: took effect} of the pilot's fine-tuned models (the report's own in-domain check): a
    planned run of the same recipe is expected to do as its pilot did."""
    s = pilot if isinstance(pilot, SuiteData) else read_pilot(pilot, settings)
    return {g.ft.replicate_hash: s.effect(g).took for g in s.groups.values() if not g.is_base}


def _vacuous_in_pilot(part: Part, e, effects: dict[str, bool]) -> bool:
    """A comparison the report would leave out as vacuous (judging's rule) on a fine-tune whose pilot did not
    take effect; a recipe the pilot did not run is assumed to take effect."""
    return part.claim in VACUOUS_WITHOUT_EFFECT and bool(
        not_taken(e, lambda g: effects.get(g.ft.replicate_hash) is not False))


def placeholder_records(plan: planning.Plan) -> list[CellRecord]:
    """One record per planned cell, as the suite would write it, with random answers (seeded by the cell)."""
    suite = plan.suite
    out = []
    for c in plan.cells:
        ck, spec = c.checkpoint, get_task(c.task)
        material = {"placeholder": True, "suite": suite.name, "protocol": suite.protocol, "model": ck.id,
                    "task": c.task, "dataset": c.dataset, "prompt": c.prompt, "shots": c.shots,
                    "demo_seed": c.demo_seed}
        rng = np.random.default_rng(int(sha256_json(material)[:8], 16))
        n = PLACEHOLDER_ITEMS
        if spec.is_classification:
            labels = list(spec.labels)
            gold = [labels[i % len(labels)] for i in range(n)]
            preds = [labels[j] for j in rng.integers(0, len(labels), n)]
            items = {"acc_first": [float(p == g) for p, g in zip(preds, gold)]}
            items["acc"] = items["acc_norm"] = list(items["acc_first"])
            for lab in labels:
                items[label_metric(PRED, lab)] = items[label_metric(PREDFIRST, lab)] = [float(p == lab) for p in preds]
                items[label_metric(GOLD, lab)] = [float(g == lab) for g in gold]
            outputs, majority = preds, max(gold.count(lab) for lab in labels) / n
        else:
            rouge = [float(x) for x in rng.uniform(0, 0.5, n)]
            items = {"rouge1": rouge, "rouge2": rouge, "rougeL": rouge}
            outputs, majority = [f"{ck.id} {c.task_name} {c.shots} {i} {x:.6f}" for i, x in enumerate(rouge)], None
        ft = None
        if ck.job is not None:
            j, cfg = ck.job, ck.job.config
            recipe = {k: v for k, v in cfg.items() if k not in OPERATIONAL and k != "seed"}  # data not read yet
            ft = FinetuneInfo(run=j.run, name=j.name, task=cfg["task"], dataset=cfg["dataset"],
                              train_size=cfg["train_size"], train_limit=cfg["train_limit"], method=j.method,
                              icl_shots=cfg["icl_shots"], icl_demos=cfg["icl_demos"] if cfg["icl_shots"] else None,
                              seed=j.seed, num_processes=cfg["num_processes"],
                              recipe_hash=j.recipe_hash or sha256_json([recipe, j.seed]),
                              replicate_hash=j.replicate_hash or sha256_json(recipe),
                              weights_sha256="planned", weight_deviation=1e-4)
        out.append(CellRecord(
            key=key_of(material), suite=suite.name, protocol=suite.protocol,
            checkpoint=CheckpointInfo(id=ck.id, kind=ck.kind, base=ck.base, path=ck.path, identity={}),
            finetune=ft, task=c.task, dataset=c.dataset, domain=c.domain, prompt=c.prompt, shots=c.shots,
            limit=c.limit, demo_seed=c.demo_seed, n=n, doc_ids=list(range(n)),
            metrics={k: float(np.mean(v)) for k, v in items.items()}, items=items, outputs=outputs,
            demo_targets=[] if c.shots == 0 else None, majority_rate=majority, wall_s=0.0,
            provenance=Provenance(genft=None, lm_eval=None, torch=None, transformers=None, backend=suite.eval.backend,
                                  batch_size=1, device="planned", dtype="planned", hostname="planned",
                                  time="planned", wall_s_shared_by=1, data_sha256="planned", demos_sha256=None,
                                  harness_hash="planned", target_delimiter=""),
            material=material))
    return out


def _planned_items(plan: planning.Plan, default: int) -> tuple[dict[tuple, int], dict[tuple, int | None]]:
    """Items a cell will score and the most its test set holds, per (task, dataset)."""
    scored, held = {}, {}
    for c in plan.cells:
        ts = (c.task, c.dataset)
        if ts not in held:  # one read of the test set's meta.json, not one per cell
            held[ts] = test_count(c.task, c.dataset, plan.suite.data_dir)
        scored[ts] = c.n or c.limit or held[ts] or default
    return scored, held


def power(suite: Suite, pilot: str | Path | None = None, default_items: int = 500) -> tuple[list[PartPower], str]:
    """Every finding part's precision at the suite's planned items; (rows, a note on the variances' source)."""
    plan = read_plan(suite)
    s = SuiteData(suite.name, placeholder_records(plan), settings=ReportSettings(n_resamples=100))
    ps = read_pilot(pilot) if pilot else None
    variances = pilot_variances(ps) if ps is not None else {}
    effects = pilot_effects(ps) if ps is not None else {}
    scored, held = _planned_items(plan, default_items)
    alpha = suite.report.alpha
    z = norm.ppf(1 - alpha / 2)
    rows = []
    for fn in FINDINGS:
        f = fn(s)
        for p in f.parts:
            key = f"{f.num}{p.name[0]}"
            ev = [e for e in p.evidence if e.comp is not None and e.fixed is None]
            vacuous = [e for e in ev if _vacuous_in_pilot(p, e, effects)]
            ev = [e for e in ev if e not in vacuous]
            left = f"; {len(vacuous)} left out: vacuous in the pilot" if vacuous else ""
            if any(e.fixed is not None for e in p.evidence):
                rows.append(PartPower(key, f"{f.title}: {p.name[3:]}", len(p.evidence), 0, 0.0, 0.0,
                                      "deterministic (no interval)", True, None, None))
                continue
            if not ev:
                rows.append(PartPower(key, f"{f.title}: {p.name[3:]}", 0, 0, float("nan"), float("nan"),
                                      "no comparisons planned" + left, False, None, None))
                continue
            us, ns, sources = [], [], set()
            for e in ev:
                kind = _kind(p, e)
                u = variances.get((key, kind)) or variances.get((None, kind))
                sources.add("pilot" if u else "defaults")
                us.append(u or DEFAULT_UNIT_VARIANCE[kind])
                ns.append(scored[(e.ts.task, e.ts.dataset)])
            us_a, ns_a = np.asarray(us), np.asarray(ns, dtype=float)
            if p.claim == "not_greater":  # steps, one by one, Holm over the part
                zq = norm.ppf(1 - alpha / len(ev))
                se = float(np.sqrt(np.max(us_a / ns_a)))
            else:
                zq = z
                se = float(np.sqrt(np.sum(us_a / ns_a)) / len(ev))
            hw = zq * se
            detect = (zq + norm.ppf(0.8)) * se
            median_n = int(statistics.median(ns))
            need = None if hw <= TARGET_HALF_WIDTH else int(np.ceil(median_n * (hw / TARGET_HALF_WIDTH) ** 2))
            most = [held[(e.ts.task, e.ts.dataset)] for e in ev]
            cap = None if any(m is None for m in most) else max(most)
            rows.append(PartPower(key, f"{f.title}: {p.name[3:]}", len(ev), median_n, hw, detect,
                                  " + ".join(sorted(sources)) + left, hw <= TARGET_HALF_WIDTH, need, cap))
    note = (f"variances from the pilot {pilot}" if pilot else
            "variances from genft's defaults (no pilot): " + ", ".join(
                f"{k} {v:g}" for k, v in DEFAULT_UNIT_VARIANCE.items()))
    return rows, note


def render(suite: Suite, rows: list[PartPower], note: str) -> str:
    """The planner's table and the parts it cannot decide."""
    out = [f"Power plan for suite {suite.name!r} ({note}; target half-width {TARGET_HALF_WIDTH} margins)", ""]
    body = []
    for r in rows:
        if r.source.startswith("deterministic") or r.comparisons == 0:
            body.append([r.key, r.name, str(r.comparisons), "—", "—", "—", r.source, "yes" if r.decidable else "no",
                         "—"])
            continue
        need = "—" if r.items_needed is None else (
            f"{r.items_needed}" + (f" (test sets hold {r.test_set_items}: add comparisons or seeds)"
                                   if r.test_set_items is not None and r.items_needed > r.test_set_items else ""))
        body.append([r.key, r.name, str(r.comparisons), str(r.items), f"±{r.half_width:.2f}", f"{r.detectable:.2f}",
                     r.source, "yes" if r.decidable else "no", need])
    out.append(table(body, ["part", "claim", "comparisons", "items each", "half-width (margins)",
                            "detectable effect (margins, 80% power)", "variances", "decidable", "items per cell needed"]))
    undecided = [r.key for r in rows if not r.decidable]
    out += ["", f"Cannot be decided at this size: {', '.join(undecided)}." if undecided else
            "Every part can be decided at this size (if its fine-tunes take effect and its arms carry information)."]
    return "\n".join(out) + "\n"
