"""The records the report reads, indexed: model groups of true replicates, conditions, test sets, and the
comparisons between conditions.

* A *group* is a base model, or the fine-tuned checkpoints of one recipe: cells whose `replicate_hash` (the
  recipe hash without the seed) is equal are replicates of one recipe, nothing else is.
* A *condition* is (group, test set, prompt, shots, demonstrations): the demonstrations are the study's
  first k (`demo_seed` None) or a random draw with one seed; cells of one condition differ only in the
  fine-tuning seed.
* A *comparison* pairs conditions on their common test items (and, for arms of one group, their common
  seeds), bootstraps its statistic (`stats`, draws keyed on the test items and the groups, so comparisons can
  be pooled) and knows whether it carries no information (`degenerate`: every arm at the floor, or the same
  output on every item) or has an arm that collapsed to one label (`note`: kept, marked).
* A fine-tuned group's *in-domain check* (`effect`): its change against its base on its own training data
  set's test set (Prompt-1, first-k demonstrations, 0 shots, or its FTICL shot count), and whether it took
  effect: the change exceeds the margin and its interval lies above zero.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..data import all_datasets
from ..prompts import TASKS, get_task
from ..suite.store import CellRecord, FinetuneInfo
from . import diagnostics
from ..suite.report_settings import ReportSettings
from .stats import Arm, Estimate, estimate

TASK_ORDER = list(TASKS)

# fine-tuning fields that say how a checkpoint was made (seed and hashes aside)
SETTINGS = ("task", "dataset", "train_size", "train_limit", "method", "icl_shots", "icl_demos", "num_processes")


def task_kind(task: str) -> str:
    return get_task(task).kind


def group_key(rec: CellRecord) -> tuple:
    if rec.finetune is None:
        return ("base", rec.model)
    return ("ft", rec.base, rec.finetune.replicate_hash)


@dataclass
class Group:
    key: tuple
    base: str
    ft: FinetuneInfo | None  # the first replicate's (the settings are the same for all)
    runs: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    names: list = field(default_factory=list)
    label: str = ""

    @property
    def is_base(self) -> bool:
        return self.ft is None

    @property
    def task(self) -> str | None:
        return self.ft.task if self.ft else None

    @property
    def dataset(self) -> str | None:
        return self.ft.dataset if self.ft else None

    @property
    def size(self) -> int | None:
        return self.ft.effective_size if self.ft else None

    @property
    def icl(self) -> int:
        return self.ft.icl_shots if self.ft else 0

    @property
    def method(self) -> str:
        return self.ft.method if self.ft else ""

    @property
    def is_plain(self) -> bool:
        return self.ft is not None and self.icl == 0

    def settings(self, *drop: str) -> tuple:
        return (self.base,) + tuple((k, getattr(self.ft, k)) for k in SETTINGS if k not in drop)

    def sort_key(self) -> tuple:
        if self.is_base:
            return (0, self.base)
        t = self.task
        return (1, self.base, TASK_ORDER.index(t) if t in TASK_ORDER else 99, str(t), self.icl, self.method,
                str(self.dataset), self.size or 0, str(self.ft.icl_demos), self.label, self.key[2])


def _default_label(g: Group) -> str:
    if g.is_base:
        return g.base
    label = f"{f'FTICL-{g.icl}' if g.icl else 'FT'} {g.dataset}@{g.size}"
    if g.method != "full":
        label += f" {g.method}"
    if g.icl and g.ft.icl_demos not in (None, "fixed"):
        label += f" {g.ft.icl_demos}-demos"
    if len(g.seeds) > 1:
        label += f" ×{len(g.seeds)} seeds"
    return label


@dataclass
class Cond:
    """One condition; `cells` holds one record per replicate (fine-tuning seed), in seed order."""

    group: Group
    task: str
    dataset: str
    domain: str
    prompt: int
    shots: int
    demo_seed: int | None
    metric: str
    cells: list

    @property
    def score(self) -> float:
        return float(np.mean([c.score for c in self.cells]))

    @property
    def n(self) -> int:
        return min(c.n for c in self.cells)

    @property
    def seeds(self) -> list:
        return [c.finetune.seed if c.finetune else None for c in self.cells]

    @property
    def demos(self) -> str:
        return "first-k" if self.demo_seed is None else f"seed {self.demo_seed}"

    def of_seeds(self, seeds: Sequence) -> list[CellRecord]:
        by = dict(zip(self.seeds, self.cells))
        return [by[s] for s in seeds]


@dataclass(frozen=True)
class TestSet:
    task: str
    dataset: str
    domain: str

    @property
    def kind(self) -> str:
        return task_kind(self.task)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.dataset}"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


@dataclass(frozen=True)
class Comp:
    """A statistic over conditions: a − b (or best − best, a slope, a mean), its interval, and why it is no
    evidence when it is not (`degenerate`)."""

    a: float
    b: float
    est: Estimate
    same_outputs: float | None = None  # share of items with the same output in both arms
    degenerate: str | None = None  # why it carries no information (left out of every judgement)
    reference: float = float("nan")  # the score a relative margin is taken of
    note: str | None = None  # kept, but marked: an arm that collapsed to one label
    conds: tuple = ()  # the conditions it compares (a, b) or reads (a)
    kind: str = "diff"  # diff: mean(a) - mean(b) per item; value: mean(a); best: a selection over conditions

    @property
    def diff(self) -> float:
        return self.est.value

    @property
    def lo(self) -> float:
        return self.est.lo

    @property
    def hi(self) -> float:
        return self.est.hi

    @property
    def n(self) -> int:
        return self.est.n_items

    @property
    def mark(self) -> str:
        if self.degenerate:
            return "≡" if self.degenerate.startswith("identical") else "⚠"
        arrow = "▲" if self.lo > 0 else "▼" if self.hi < 0 else ""
        return arrow + ("⊘" if self.note else "")

    def text(self) -> str:
        seeds = f" ({self.est.replicates} seeds)" if self.est.replicates > 1 else ""
        mark = f" {self.mark}" if self.mark else ""
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]{seeds}{mark}"


TOOK_EFFECT, NO_EFFECT, NOT_CHECKED = "took effect", "did not take effect", "not checked"


@dataclass(frozen=True)
class Effect:
    """A fine-tuned group's in-domain check against its base."""

    status: str  # TOOK_EFFECT | NO_EFFECT | NOT_CHECKED
    what: str  # where it was checked, or why it was not
    comp: Comp | None = None
    margin: float = float("nan")

    @property
    def took(self) -> bool:
        return self.status == TOOK_EFFECT

    def text(self) -> str:
        if self.comp is None:
            return f"{self.status} ({self.what})"
        return f"{self.status}: {self.what} {self.comp.text()} (margin {self.margin:.3f})"


class SuiteData:
    """The records indexed by group and condition, with the comparisons the tables and findings use."""

    def __init__(self, name: str, records: Iterable[CellRecord], manifests: Mapping[str, Mapping] | None = None,
                 settings: ReportSettings | None = None):
        self.name = name
        self.settings = settings or ReportSettings()
        self.manifests = dict(manifests or {})
        dedup: dict[str, CellRecord] = {}
        for rec in records:
            if not isinstance(rec, CellRecord):
                raise TypeError(f"the report reads CellRecords (genft.suite.store), got {type(rec).__name__}")
            dedup[rec.key] = rec
        cells = sorted(dedup.values(), key=self._cell_order)
        self.groups: dict[tuple, Group] = {}
        for c in cells:
            k = group_key(c)
            g = self.groups.setdefault(k, Group(k, c.base, c.finetune))
            run = c.finetune.run if c.finetune else c.model
            for lst, v in ((g.runs, run), (g.seeds, c.finetune.seed if c.finetune else None),
                           (g.names, c.finetune.name if c.finetune else c.model)):
                if v is not None and v not in lst:
                    lst.append(v)
        labels = defaultdict(list)
        for g in self.groups.values():
            g.seeds.sort()
            g.label = _default_label(g)
            labels[g.settings() if g.ft else g.key].append(g)
        for same in labels.values():
            if len(same) > 1:  # recipes that differ in something the label does not show: name them
                for g in same:
                    g.label = f"{g.label} [{', '.join(g.names)}]"
        self.ordered_groups = sorted(self.groups.values(), key=Group.sort_key)
        self.bases = sorted({g.base for g in self.groups.values()})

        buckets: dict[tuple, dict] = defaultdict(dict)
        for c in cells:
            seed = c.finetune.seed if c.finetune else None
            buckets[(group_key(c), c.task, c.dataset, c.prompt, c.shots, c.demo_seed)].setdefault(seed, c)
        self.conds: dict[tuple, Cond] = {}
        sets: dict[tuple, TestSet] = {}
        for (gk, task, ds, prompt, shots, demo), by_seed in buckets.items():
            cs = [by_seed[s] for s in sorted(by_seed, key=lambda s: (s is not None, s or 0))]
            self.conds[(gk, task, ds, prompt, shots, demo)] = Cond(self.groups[gk], task, ds, cs[0].domain, prompt,
                                                                   shots, demo, cs[0].primary_metric, cs)
            sets.setdefault((task, ds), TestSet(task, ds, cs[0].domain))
        order = {n: i for i, n in enumerate(all_datasets())}
        self.test_sets = sorted(sets.values(), key=lambda t: (
            TASK_ORDER.index(t.task) if t.task in TASK_ORDER else 99, t.task, 0 if t.domain == "in" else 1,
            order.get(t.dataset, 10**6), t.dataset))
        set_order = {(ts.task, ts.dataset): i for i, ts in enumerate(self.test_sets)}
        self.cells: list[CellRecord] = sorted(cells, key=lambda c: (
            self.groups[group_key(c)].sort_key(), set_order[c.task, c.dataset], self._cell_order(c)))
        self._cache: dict[tuple, Comp] = {}
        self._effects: dict[tuple, Effect] = {}

    @staticmethod
    def _cell_order(c: CellRecord) -> tuple:
        ft = c.finetune
        return (c.base, c.model, ft.replicate_hash if ft else "", c.task, c.dataset, c.prompt, c.shots,
                -1 if c.demo_seed is None else c.demo_seed, ft.seed if ft else -1, -c.n, c.key)

    # -- look-ups
    def group_of(self, rec: CellRecord) -> Group:
        return self.groups[group_key(rec)]

    def base_group(self, base: str) -> Group | None:
        return self.groups.get(("base", base))

    def cond(self, group: Group | None, ts: TestSet | tuple, prompt: int, shots: int,
             demo_seed: int | None = None) -> Cond | None:
        if group is None:
            return None
        task, ds = (ts.task, ts.dataset) if isinstance(ts, TestSet) else ts
        return self.conds.get((group.key, task, ds, prompt, shots, demo_seed))

    def conds_of(self, group: Group | None, ts: TestSet, prompt: int | None = None, demo_seed: int | None = None,
                 any_demos: bool = False) -> list[Cond]:
        if group is None:
            return []
        out = [c for (gk, t, d, p, s, ds), c in self.conds.items()
               if gk == group.key and t == ts.task and d == ts.dataset and (prompt is None or p == prompt)
               and (any_demos or ds == demo_seed)]
        return sorted(out, key=lambda c: (c.prompt, c.shots, -1 if c.demo_seed is None else c.demo_seed))

    def columns(self, ts: TestSet, prompt: int, groups: Iterable[Group] | None = None) -> list[tuple]:
        """The (shots, demo seed) pairs measured on a test set at a prompt."""
        keys = None if groups is None else {g.key for g in groups}
        return sorted({(s, ds) for (gk, t, d, p, s, ds) in self.conds
                       if t == ts.task and d == ts.dataset and p == prompt and (keys is None or gk in keys)},
                      key=lambda x: (x[0], -1 if x[1] is None else x[1]))

    def prompts(self) -> list[int]:
        return sorted({k[3] for k in self.conds})

    def ft_groups(self, base: str, task: str | None = None, plain: bool | None = True) -> list[Group]:
        return [g for g in self.ordered_groups if not g.is_base and g.base == base and (task is None or g.task == task)
                and (plain is None or g.is_plain == plain)]

    def plain_match(self, g: Group) -> Group | None:
        """The plain fine-tuning group with the same visible settings as an FTICL group (None when there is
        none, or more than one: recipes that differ only in hyper-parameters cannot be told apart here)."""
        found = [h for h in self.ordered_groups if h.is_plain and h.settings("icl_shots", "icl_demos")
                 == g.settings("icl_shots", "icl_demos")]
        return found[0] if len(found) == 1 else None

    def series(self, base: str) -> list[list[Group]]:
        """Training-size series: plain groups whose visible settings differ only in the training size."""
        by: dict[tuple, list[Group]] = defaultdict(list)
        for g in self.ft_groups(base):
            by[g.settings("train_size", "train_limit")].append(g)
        return [sorted(gs, key=lambda g: g.size or 0) for gs in by.values()
                if len({g.size for g in gs}) == len(gs) > 1]

    # -- comparisons
    @staticmethod
    def items_key(conds: Sequence[Cond]) -> tuple:
        """What a comparison's item draws are keyed on: the test set and the items common to its conditions."""
        docs = sorted(set.intersection(*(set(c.doc_ids) for cond in conds for c in cond.cells)))
        return (conds[0].task, conds[0].dataset, tuple(docs))

    def arms(self, conds: Sequence[Cond]) -> tuple[list[Arm], list[list[list[str]]]]:
        """Arms on the items common to every condition; the arms of one group on the seeds common to its
        conditions.  Also each arm's outputs (per replicate, per item; generations normalized)."""
        docs = list(self.items_key(conds)[2])
        seeds: dict[tuple, list] = {}
        for cond in conds:
            common = [s for s in seeds.get(cond.group.key, cond.seeds) if s in cond.seeds]
            seeds[cond.group.key] = common
        arms, outs = [], []
        for cond in conds:
            recs = cond.of_seeds(seeds[cond.group.key])
            rows, out_rows = [], []
            for r in recs:
                where = {d: i for i, d in enumerate(r.doc_ids)}
                pos = [where[d] for d in docs]
                vals = r.items[cond.metric]
                rows.append([np.nan if vals[i] is None else vals[i] for i in pos])
                o = diagnostics.outputs(r)
                out_rows.append([o[i] for i in pos])
            arms.append(Arm(np.asarray(rows, dtype=float), cond.group.key))
            outs.append(out_rows)
        return arms, outs

    def evaluate(self, conds: Sequence[Cond], stat: Callable[[np.ndarray], np.ndarray]) -> Estimate:
        arms, _ = self.arms(conds)
        return estimate(arms, stat, n_resamples=self.settings.n_resamples, seed=self.settings.seed,
                        items_key=self.items_key(conds))

    def degenerate(self, conds: Sequence[Cond], outs: Sequence | None = None) -> str | None:
        """Why comparing these conditions carries no information: every one of them sits at the floor (answers
        one label at or below the majority rate), or every item gets the same output in all of them."""
        floors = [diagnostics.one_label(c.cells, self.settings.one_label_share) for c in conds]
        if len(conds) > 1 and all(floors):
            return "floor: every arm answers one label (" + "; ".join(
                f"{c.group.label} {why}" for c, why in zip(conds, floors)) + ")"
        if outs is None:
            outs = self.arms(conds)[1]
        if len(outs) > 1 and diagnostics.same_output_share(outs[0], [r for o in outs[1:] for r in o]) == 1.0:
            return "identical outputs on every item"
        return None

    def collapse(self, conds: Sequence[Cond]) -> str | None:
        """An arm at the floor while another is not: kept as evidence, marked (a fine-tuned model that collapsed
        to one label is an outcome of fine-tuning)."""
        floors = [diagnostics.one_label(c.cells, self.settings.one_label_share) for c in conds]
        if not any(floors) or all(floors):
            return None
        return "; ".join(f"{'collapse' if not c.group.is_base else 'floor'}: {c.group.label} {why}"
                         for c, why in zip(conds, floors) if why)

    def compare(self, a: Cond | None, b: Cond | None) -> Comp | None:
        if a is None or b is None:
            return None
        key = ("diff", id(a), id(b))
        if key not in self._cache:
            arms, outs = self.arms([a, b])
            est = estimate(arms, lambda m: m[:, 0] - m[:, 1], n_resamples=self.settings.n_resamples,
                           seed=self.settings.seed, items_key=self.items_key([a, b]))
            self._cache[key] = Comp(float(arms[0].values.mean()), float(arms[1].values.mean()), est,
                                    diagnostics.same_output_share(outs[0], outs[1]), self.degenerate([a, b], outs),
                                    float(arms[1].values.mean()), self.collapse([a, b]), (a, b), "diff")
        return self._cache[key]

    def margin(self, metric: str, reference: float) -> float:
        return self.settings.margin(metric).of(reference)

    def effect(self, g: Group) -> Effect:
        """The in-domain check of a fine-tuned group: its own training data set's test set, Prompt-1, the
        study's first-k demonstrations, 0 shots (FTICL: its own shot count when measured), against its base at
        the same settings.  It took effect when the change exceeds the margin and its interval lies above 0."""
        if g.key in self._effects:
            return self._effects[g.key]
        ts = (g.task, g.dataset)
        shots = [k for k in ([g.icl] if g.icl else []) + [0]
                 if self.cond(g, ts, 1, k) is not None and self.cond(self.base_group(g.base), ts, 1, k) is not None]
        if not shots:
            out = Effect(NOT_CHECKED, f"no Prompt-1 cell of it and its base on {g.task}/{g.dataset}")
        else:
            c = self.cond(g, ts, 1, shots[0])
            comp = self.vs_base(c)
            margin = self.margin(c.metric, comp.reference)
            what = f"{g.task}/{g.dataset} {shots[0]}-shot, FT − base"
            if comp.degenerate:
                out = Effect(NO_EFFECT, what + f" ({comp.degenerate})", comp, margin)
            else:
                took = comp.diff > margin and comp.lo > 0
                out = Effect(TOOK_EFFECT if took else NO_EFFECT, what, comp, margin)
        self._effects[g.key] = out
        return out

    def vs_base(self, c: Cond | None) -> Comp | None:
        if c is None or c.group.is_base:
            return None
        return self.compare(c, self.cond(self.base_group(c.group.base), (c.task, c.dataset), c.prompt, c.shots,
                                         c.demo_seed))

    def cell_text(self, c: Cond | None) -> str:
        """A table cell: the score, and for a fine-tuned model the change vs base with its interval."""
        if c is None:
            return "—"
        comp = self.vs_base(c)
        return fmt(c.score) if comp is None else f"{fmt(c.score)} ({comp.text()})"
