"""The suite report: the study's transfer tables, its findings judged against this suite, figures.

Input is the suite runner's records (one JSON object per finished evaluation cell, `genft.suite.load_cells`)
and the training manifests of the fine-tuned runs (`genft.suite.load_manifests`).  `write_report` is pure
given those two: tests feed it synthetic records.  It writes `<out_dir>/<suite>.md` and the figures under
`<out_dir>/<suite>/`, every file through a temporary file and `os.replace`, after everything was built in
memory, so that a failure leaves the previous report untouched and no partial file behind.

Conventions (stated in the report itself):

* Primary metric: `acc_first` (the study's first-token rule) for classification, ROUGE-L F for generation.
  The full-label rule (`acc`) is in the label-distribution table and the appendix.
* A *condition* is (model, test set, prompt, shots).  Cells of one condition that differ only in the
  fine-tuning seed or the demonstration seed are replicates: the tables show their mean, and the per-item
  values are averaged over replicates before any interval is computed; the Seeds section shows the spread.
* A change is always against the base model at the same shots and prompt, with a 95% paired bootstrap
  percentile interval: item indices are resampled, the same indices for both sides (N_RESAMPLES resamples,
  a fixed seed, so the report is deterministic).  ▲ / ▼ mark intervals that exclude zero.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from tabulate import tabulate

from .data import all_datasets
from .files import atomic_write
from .prompts import TARGET_DELIMITER, TASKS

N_RESAMPLES = 2000
BOOT_SEED = 0
PAR_MARGIN = 0.05  # an interval inside (-0.05, +0.05) counts as "on par" (5 accuracy points / 0.05 ROUGE-L)
NEAR_ZERO = 0.05  # a ROUGE-L whose interval lies at or below this counts as "~0"
ONE_LABEL = 0.90  # a model answering one label for >= 90% of the items is flagged

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive"
NOT_MEASURED = "not measured in this suite"

TASK_ORDER = list(TASKS)


# ---------------------------------------------------------------- statistics

_IDX_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    key = (n, n_resamples, seed)
    idx = _IDX_CACHE.get(key)
    if idx is None:
        if len(_IDX_CACHE) > 16:
            _IDX_CACHE.clear()
        idx = _IDX_CACHE[key] = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    return idx


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES,
                     seed: int = BOOT_SEED, alpha: float = 0.05) -> tuple[float, float, float]:
    """mean(a - b) and its (1 - alpha) percentile interval, resampling item indices (the same for both).

    The indices are `np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))`; the interval is
    `np.quantile(means, [alpha / 2, 1 - alpha / 2])` of the resampled mean differences."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs two equal-length 1-d sequences, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one item")
    d = a - b
    means = d[_indices(len(d), n_resamples, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)


def bootstrap_mean(a: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = BOOT_SEED,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    a = np.asarray(a, dtype=float)
    return paired_bootstrap(a, np.zeros_like(a), n_resamples, seed, alpha)


_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile (t_{0.975, df})."""
    if df < 1:
        return float("nan")
    if df <= 30:
        return _T95[df - 1]
    return 2.000 if df <= 60 else 1.980 if df <= 120 else 1.960


def seed_interval(values: Sequence[float]) -> dict:
    """Mean, mean ± t_{0.975,n-1}·sd/√n (sample sd), min and max of replicate scores."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mean = float(v.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "lo": float("nan"), "hi": float("nan"),
                "min": mean, "max": mean}
    sd = float(v.std(ddof=1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half,
            "min": float(v.min()), "max": float(v.max())}


@dataclass(frozen=True)
class Comp:
    """A paired comparison a - b over the same items."""

    a: float
    b: float
    diff: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def mark(self) -> str:
        if not self.has_interval:
            return ""
        return "▲" if self.lo > 0 else "▼" if self.hi < 0 else ""

    def cls(self, margin: float = PAR_MARGIN) -> str:
        """up (interval above 0), down (below 0), flat (inside ±margin), wide (none of these)."""
        if not self.has_interval:
            return "wide"
        if self.lo > 0:
            return "up"
        if self.hi < 0:
            return "down"
        if self.lo > -margin and self.hi < margin:
            return "flat"
        return "wide"

    def text(self) -> str:
        if not self.has_interval:
            return f"{self.diff:+.3f} [no items]"
        return f"{self.diff:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]" + (f" {self.mark}" if self.mark else "")


# ---------------------------------------------------------------- records -> models and conditions


def task_kind(task: str, metrics: Mapping | None = None) -> str:
    spec = TASKS.get(task)
    if spec is not None:
        return spec.kind
    return "generation" if metrics and "rougeL" in metrics else "classification"


def primary_metric(task: str, metrics: Mapping | None = None) -> str:
    if task_kind(task, metrics) == "generation":
        return "rougeL"
    return "acc" if metrics is not None and "acc_first" not in metrics and "acc" in metrics else "acc_first"


def _eff_size(ft: Mapping) -> int | None:
    size, lim = ft.get("train_size"), ft.get("train_limit")
    if lim and (size is None or lim < size):
        return lim
    return size


_FT_NOT_IN_GROUP = ("run", "seed", "weight_deviation")


def group_key(cell: Mapping) -> tuple:
    """Cells of one model group differ only in the fine-tuning seed (and run name / checkpoint)."""
    ft = cell.get("finetune")
    base = cell.get("base") or cell.get("model")
    if not ft:
        return ("base", str(base))
    sig = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in ft.items() if k not in _FT_NOT_IN_GROUP))
    return ("ft", str(base), sig)


@dataclass
class Group:
    key: tuple
    base: str
    ft: dict | None
    runs: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)
    label: str = ""

    @property
    def is_base(self) -> bool:
        return self.ft is None

    @property
    def task(self) -> str | None:
        return self.ft.get("task") if self.ft else None

    @property
    def dataset(self) -> str | None:
        return self.ft.get("dataset") if self.ft else None

    @property
    def size(self) -> int | None:
        return _eff_size(self.ft) if self.ft else None

    @property
    def icl(self) -> int:
        return int(self.ft.get("icl_shots") or 0) if self.ft else 0

    @property
    def method(self) -> str:
        return str(self.ft.get("method") or "full") if self.ft else ""

    @property
    def is_plain(self) -> bool:
        return self.ft is not None and self.icl == 0

    def series_key(self) -> tuple:
        """The group's signature without the training size: a training-size series."""
        ft = {k: v for k, v in (self.ft or {}).items() if k not in _FT_NOT_IN_GROUP + ("train_size", "train_limit")}
        return (self.base, json.dumps(ft, sort_keys=True))

    def plain_key(self) -> tuple:
        """The signature of the plain fine-tuning run this FTICL run is compared with."""
        ft = {k: v for k, v in (self.ft or {}).items() if k not in _FT_NOT_IN_GROUP + ("icl_shots", "icl_demos")}
        return (self.base, json.dumps(ft, sort_keys=True))

    def sort_key(self) -> tuple:
        if self.is_base:
            return (0, self.base)
        t = self.task
        return (1, self.base, TASK_ORDER.index(t) if t in TASK_ORDER else 99, str(t), self.icl, self.method,
                str(self.dataset), self.size or 0, str(self.ft.get("icl_demos")), self.label)


def _default_label(g: Group) -> str:
    if g.is_base:
        return g.base
    kind = f"FTICL-{g.icl}" if g.icl else "FT"
    label = f"{kind} {g.dataset}@{g.size}"
    if g.method != "full":
        label += f" {g.method}"
    if g.icl and g.ft.get("icl_demos") not in (None, "fixed"):
        label += f" {g.ft.get('icl_demos')}-demos"
    if len(g.seeds) > 1:
        label += f" ×{len(g.seeds)} seeds"
    return label


@dataclass
class Cond:
    """One condition: a model group on one test set with one prompt and shot count (replicates averaged)."""

    group: Group
    task: str
    dataset: str
    domain: str
    prompt: int
    shots: int
    metric: str
    cells: list
    score: float = float("nan")
    items: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.items) if self.items is not None else int(self.cells[0].get("n") or 0)


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


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-") or "suite"


class SuiteData:
    """The cells indexed by model group and condition, with paired comparisons."""

    def __init__(self, name: str, cells: Iterable[Mapping], manifests: Mapping[str, Mapping] | None = None):
        self.name = name
        self.manifests = dict(manifests or {})
        dedup: dict[str, Mapping] = {}
        for i, c in enumerate(cells):
            for req in ("task", "dataset", "metrics"):
                if req not in c:
                    raise ValueError(f"cell {c.get('key', i)!r}: missing field {req!r}")
            dedup[str(c.get("key") or i)] = c  # a re-run of the same cell replaces the earlier record
        cells = sorted(dedup.values(), key=self._cell_order)
        self.groups: dict[tuple, Group] = {}
        for c in cells:
            k = group_key(c)
            g = self.groups.get(k)
            if g is None:
                ft = c.get("finetune")
                g = self.groups[k] = Group(k, k[1], {kk: v for kk, v in ft.items() if kk not in _FT_NOT_IN_GROUP}
                                           if ft else None)
            ft = c.get("finetune") or {}
            run = ft.get("run") or c.get("model")
            if run not in g.runs:
                g.runs.append(run)
            if ft and ft.get("seed") not in g.seeds:
                g.seeds.append(ft.get("seed"))
            if c.get("checkpoint") and c.get("checkpoint") not in g.checkpoints:
                g.checkpoints.append(c.get("checkpoint"))
        labels = defaultdict(list)
        for g in self.groups.values():
            g.label = _default_label(g)
            labels[g.label].append(g)
        for same in labels.values():
            if len(same) > 1:
                for g in same:
                    g.label = f"{g.label} [{g.runs[0]}]"
        self.ordered_groups = sorted(self.groups.values(), key=Group.sort_key)
        self.bases = sorted({g.base for g in self.groups.values()})

        buckets: dict[tuple, list] = defaultdict(list)
        for c in cells:
            prompt, shots = int(c.get("prompt") or 1), int(c.get("shots") or 0)
            buckets[(group_key(c), c["task"], c["dataset"], prompt, shots)].append(c)
        self.conds: dict[tuple, Cond] = {}
        registry = all_datasets()
        sets: dict[tuple, TestSet] = {}
        for (gk, task, ds, prompt, shots), cs in buckets.items():
            metric = primary_metric(task, cs[0]["metrics"])
            domain = cs[0].get("domain") or (registry[ds].domain if ds in registry else "?")
            cond = Cond(self.groups[gk], task, ds, domain, prompt, shots, metric, cs)
            vals = [c["metrics"].get(metric) for c in cs]
            vals = [v for v in vals if v is not None]
            cond.score = float(np.mean(vals)) if vals else float("nan")
            per = [(c.get("items") or {}).get(metric) for c in cs]
            if per and all(p is not None and len(p) for p in per):
                m = min(len(p) for p in per)
                items = np.mean([np.asarray(p[:m], dtype=float) for p in per], axis=0)  # None -> nan
                cond.items = items if np.isfinite(items).all() else None  # no interval over missing values
            self.conds[(gk, task, ds, prompt, shots)] = cond
            sets.setdefault((task, ds), TestSet(task, ds, domain))
        order = {name: i for i, name in enumerate(registry)}
        self.test_sets = sorted(sets.values(), key=lambda t: (
            TASK_ORDER.index(t.task) if t.task in TASK_ORDER else 99, t.task, 0 if t.domain == "in" else 1,
            order.get(t.dataset, 10**6), t.dataset))
        set_order = {(ts.task, ts.dataset): i for i, ts in enumerate(self.test_sets)}
        self.cells = sorted(cells, key=lambda c: (self.groups[group_key(c)].sort_key(),
                                                  set_order[c["task"], c["dataset"]], self._cell_order(c)))
        self._comp_cache: dict[tuple, Comp | None] = {}

    @staticmethod
    def _cell_order(c: Mapping) -> tuple:
        return (str(c.get("base") or c.get("model")), json.dumps(c.get("finetune"), sort_keys=True), str(c["task"]),
                str(c["dataset"]), int(c.get("prompt") or 1), int(c.get("shots") or 0),
                -1 if c.get("demo_seed") is None else int(c["demo_seed"]), str(c.get("key")))

    # -- look-ups
    def base_group(self, base: str) -> Group | None:
        return self.groups.get(("base", base))

    def cond(self, group: Group | None, ts: TestSet | tuple, prompt: int, shots: int) -> Cond | None:
        if group is None:
            return None
        task, ds = (ts.task, ts.dataset) if isinstance(ts, TestSet) else ts
        return self.conds.get((group.key, task, ds, prompt, shots))

    def conds_of(self, group: Group, ts: TestSet, prompt: int | None = None) -> list[Cond]:
        out = [c for (gk, t, d, p, s), c in self.conds.items()
               if gk == group.key and t == ts.task and d == ts.dataset and (prompt is None or p == prompt)]
        return sorted(out, key=lambda c: (c.prompt, c.shots))

    def shots_for(self, ts: TestSet, prompt: int, groups: Iterable[Group] | None = None) -> list[int]:
        keys = None if groups is None else {g.key for g in groups}
        return sorted({s for (gk, t, d, p, s) in self.conds
                       if t == ts.task and d == ts.dataset and p == prompt and (keys is None or gk in keys)})

    def prompts(self) -> list[int]:
        return sorted({k[3] for k in self.conds})

    def ft_groups(self, base: str, task: str | None = None, plain: bool | None = True) -> list[Group]:
        return [g for g in self.ordered_groups if not g.is_base and g.base == base and (task is None or g.task == task)
                and (plain is None or g.is_plain == plain)]

    def compare(self, a: Cond | None, b: Cond | None) -> Comp | None:
        if a is None or b is None:
            return None
        key = (id(a), id(b))
        if key not in self._comp_cache:
            if a.items is not None and b.items is not None:
                m = min(len(a.items), len(b.items))
                diff, lo, hi = paired_bootstrap(a.items[:m], b.items[:m])
                comp = Comp(float(a.items[:m].mean()), float(b.items[:m].mean()), diff, lo, hi, m)
            else:
                comp = Comp(a.score, b.score, a.score - b.score, float("nan"), float("nan"), 0)
            self._comp_cache[key] = comp
        return self._comp_cache[key]

    def vs_base(self, c: Cond | None) -> Comp | None:
        if c is None or c.group.is_base:
            return None
        return self.compare(c, self.cond(self.base_group(c.group.base), (c.task, c.dataset), c.prompt, c.shots))

    def cell_text(self, c: Cond | None) -> str:
        """A table cell: the score, and for a fine-tuned model the change vs base with its interval."""
        if c is None:
            return "—"
        comp = self.vs_base(c)
        if comp is None:
            return _fmt(c.score)
        return f"{_fmt(c.score)} ({comp.text()})"

    def plain_match(self, g: Group) -> Group | None:
        """The plain fine-tuning group with the same settings as an FTICL group."""
        for h in self.ordered_groups:
            if h.is_plain and h.plain_key() == g.plain_key():
                return h
        return None


# ---------------------------------------------------------------- findings


@dataclass
class Finding:
    num: int
    title: str
    claim: str
    verdict: str
    summary: str
    headers: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # (name, verdict, summary) of sub-claims


_SUPPORT = {"greater": {"up"}, "less": {"down"}, "not_less": {"up", "flat"}}
_CONTRARY = {"greater": {"down", "flat"}, "less": {"up", "flat"}, "not_less": {"down"}}


def judge(classes: Sequence[str], claim: str) -> tuple[str, str]:
    """Majority rule over comparisons: holds when more than half support the claim (interval on the claimed
    side of zero; for "not_less" also an interval inside ±PAR_MARGIN), does not hold when more than half
    contradict it, otherwise inconclusive.  Returns (verdict, counts text)."""
    n = len(classes)
    if n == 0:
        return NOT_MEASURED, "no comparisons"
    s = sum(c in _SUPPORT[claim] for c in classes)
    k = sum(c in _CONTRARY[claim] for c in classes)
    w = n - s - k
    counts = f"{s} of {n} comparisons support, {k} contradict, {w} undetermined"
    if 2 * s > n:
        return HOLDS, counts
    if 2 * k > n:
        return DOES_NOT_HOLD, counts
    why = "interval too wide" if w >= max(s, k) else "mixed results"
    return f"{INCONCLUSIVE} ({why})", counts


def combine(parts: Sequence[tuple[str, str, str]]) -> str:
    verdicts = [v for _, v, _ in parts]
    if all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    if any(v == DOES_NOT_HOLD for v in verdicts):
        return DOES_NOT_HOLD
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    missing = [name.split(":")[0] for name, v, _ in parts if v == NOT_MEASURED]
    wide = [name.split(":")[0] for name, v, _ in parts if v.startswith(INCONCLUSIVE)]
    why = []
    if wide:
        why.append("interval too wide or mixed: part " + ", ".join(wide))
    if missing:
        why.append("cells missing: part " + ", ".join(missing))
    return f"{INCONCLUSIVE} ({'; '.join(why)})"


def _row(g: Group, ts: TestSet, what: str, comp: Comp, cls: str | None = None) -> list:
    return [g.label, ts.name, what, _fmt(comp.a), _fmt(comp.b), comp.text(), cls or comp.cls()]


_COMP_HEADERS = ["model", "test set", "comparison", "a", "b", "a − b [95% CI]", "class"]


def finding_in_domain(s: SuiteData) -> Finding:
    """(1) Plain FT at 0-shot vs the base model's best k-shot (k > 0, chosen on the test set), Prompt-1,
    in-domain sets; sentiment is listed but not judged (the study's stated exception)."""
    classes, rows = [], []
    for base in s.bases:
        bg = s.base_group(base)
        for g in s.ft_groups(base):
            for ts in s.test_sets:
                if ts.task != g.task or ts.domain != "in":
                    continue
                ft0 = s.cond(g, ts, 1, 0)
                demos = [c for c in s.conds_of(bg, ts, 1) if c.shots > 0] if bg else []
                if ft0 is None or not demos:
                    continue
                best = max(demos, key=lambda c: c.score)
                comp = s.compare(ft0, best)
                exception = ts.task == "sentiment"
                cls = comp.cls()
                if not exception:
                    classes.append(cls)
                rows.append(_row(g, ts, f"FT 0-shot − base best {best.shots}-shot", comp,
                                 cls + (" (exception, not judged)" if exception else "")))
    verdict, counts = judge(classes, "greater")
    return Finding(1, "In-domain: fine-tuned at 0-shot vs the base model with demonstrations",
                   "Fine-tuned models at 0-shot beat the base model with demonstrations in-domain (XLSum, SocialIQA, "
                   "MNLI, PAWS); sentiment is the exception.",
                   verdict, counts + "; base shots selected on the test set", _COMP_HEADERS, rows)


def finding_train_size(s: SuiteData) -> Finding:
    """(2) Consecutive training sizes of one series (same settings otherwise), 0-shot Prompt-1, in-domain
    sets: larger − smaller.  Holds when some step is flat (inside ±margin) or worse; does not hold when every
    step is an improvement; inconclusive otherwise."""
    classes, rows = [], []
    for base in s.bases:
        series: dict[tuple, list[Group]] = defaultdict(list)
        for g in s.ft_groups(base):
            series[g.series_key()].append(g)
        for gs in series.values():
            gs = sorted(gs, key=lambda g: g.size or 0)
            for small, large in zip(gs, gs[1:]):
                for ts in s.test_sets:
                    if ts.task != small.task or ts.domain != "in":
                        continue
                    comp = s.compare(s.cond(large, ts, 1, 0), s.cond(small, ts, 1, 0))
                    if comp is None:
                        continue
                    classes.append(comp.cls())
                    rows.append(_row(large, ts, f"{large.size} − {small.size} examples, 0-shot", comp))
    n = len(classes)
    counts = (f"{classes.count('up')} of {n} size steps improve, {classes.count('flat')} flat, "
              f"{classes.count('down')} worse, {classes.count('wide')} undetermined")
    if n == 0:
        verdict = NOT_MEASURED
    elif classes.count("down") or classes.count("flat"):
        verdict = HOLDS
    elif classes.count("up") == n:
        verdict = DOES_NOT_HOLD
    else:
        verdict = f"{INCONCLUSIVE} (interval too wide)"
    return Finding(2, "Training size", "More training data is not reliably better (PAWS 81.6% at 2K -> 93.2% at "
                   "4K; 4K -> 6K flat or worse).", verdict, counts if n else "fewer than two training sizes",
                   _COMP_HEADERS, rows)


def _vs_base_part(s: SuiteData, name: str, claim: str, pick: Callable[[Group, TestSet], bool],
                  prompt: int = 1) -> tuple[tuple[str, str, str], list]:
    classes, rows = [], []
    for base in s.bases:
        for g in s.ft_groups(base):
            for ts in s.test_sets:
                if not pick(g, ts):
                    continue
                for c in s.conds_of(g, ts, prompt):
                    comp = s.vs_base(c)
                    if comp is None:
                        continue
                    classes.append(comp.cls())
                    rows.append(_row(g, ts, f"{name}: FT − base, {c.shots}-shot P{prompt}", comp))
    verdict, counts = judge(classes, claim)
    return (name, verdict, counts), rows


def finding_out_of_domain(s: SuiteData) -> Finding:
    """(3) Own task, out-of-domain sets, Prompt-1, every shot count, FT − base at the same shots:
    generation-tuned below (less), classification-tuned on par or better (not_less)."""
    pa, ra = _vs_base_part(s, "a: generation-tuned below base", "less",
                           lambda g, ts: ts.task == g.task and ts.domain == "out" and ts.kind == "generation")
    pb, rb = _vs_base_part(s, "b: classification-tuned on par or better", "not_less",
                           lambda g, ts: ts.task == g.task and ts.domain == "out" and ts.kind == "classification")
    parts = [pa, pb]
    return Finding(3, "Out-of-domain", "Generation-tuned models fall below the base model out-of-domain at every "
                   "shot count; classification-tuned models are on par (sentiment) or better (paraphrase, NLI).",
                   combine(parts), "", _COMP_HEADERS, ra + rb, parts)


def finding_cross_task(s: SuiteData) -> Finding:
    """(4) a: classification-tuned models on generation sets (Prompt-1): ROUGE-L interval at or below
    NEAR_ZERO; b: Prompt-2 − Prompt-1 for them (greater); c: generation-tuned models on classification sets,
    FT − base (not_less)."""
    classes_a, rows = [], []
    classes_b = []
    for base in s.bases:
        for g in s.ft_groups(base):
            if task_kind(g.task) != "classification":
                continue
            for ts in s.test_sets:
                if ts.kind != "generation":
                    continue
                for c in s.conds_of(g, ts, 1):
                    if c.items is not None:
                        mean, lo, hi = bootstrap_mean(c.items)
                    else:
                        mean, lo, hi = c.score, float("nan"), float("nan")
                    comp = Comp(mean, 0.0, mean, lo, hi, c.n)
                    cls = ("wide" if not comp.has_interval else "down" if hi <= NEAR_ZERO
                           else "up" if lo > NEAR_ZERO else "wide")
                    classes_a.append(cls)
                    ci = f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if comp.has_interval else f"{mean:.3f} [no items]"
                    rows.append([g.label, ts.name, f"a: ROUGE-L, {c.shots}-shot P1 (~0: CI ≤ {NEAR_ZERO})",
                                 _fmt(mean), "", ci,
                                 {"down": "~0", "up": "above ~0", "wide": "wide"}[cls]])
                    comp2 = s.compare(s.cond(g, ts, 2, c.shots), c)
                    if comp2 is not None:
                        classes_b.append(comp2.cls())
                        rows.append(_row(g, ts, f"b: Prompt-2 − Prompt-1, {c.shots}-shot", comp2))
    va, ca = judge(classes_a, "less")
    vb, cb = judge(classes_b, "greater")
    pc, rc = _vs_base_part(s, "c: generation tuning does not hurt classification", "not_less",
                           lambda g, ts: task_kind(g.task) == "generation" and ts.kind == "classification")
    parts = [("a: classification-tuned ~0 ROUGE-L on generation", va, ca),
             ("b: Prompt-2 partly restores them", vb, cb), pc]
    return Finding(4, "Cross-task", "Classification-tuned models score ~0 ROUGE-L on generation (output-space "
                   "specialisation); Prompt-2 partly restores them. Generation tuning rarely hurts classification.",
                   combine(parts), "", _COMP_HEADERS, rows + rc, parts)


def finding_fticl(s: SuiteData) -> Finding:
    """(5) FTICL − plain FT (same settings otherwise) at every matched prompt and shot count:
    a: generation, in-domain, not_less; b: generation, out-of-domain + cross-task, greater;
    c: classification, in-domain, less."""
    buckets = {"a": [], "b": [], "c": []}
    rows = []
    for base in s.bases:
        for g in s.ft_groups(base, plain=False):
            plain = s.plain_match(g)
            if plain is None:
                continue
            gen = task_kind(g.task) == "generation"
            for ts in s.test_sets:
                own = ts.task == g.task
                if gen and own and ts.domain == "in":
                    part = "a"
                elif gen and not (own and ts.domain == "in"):
                    part = "b"
                elif not gen and own and ts.domain == "in":
                    part = "c"
                else:
                    continue
                for c in s.conds_of(g, ts):
                    comp = s.compare(c, s.cond(plain, ts, c.prompt, c.shots))
                    if comp is None:
                        continue
                    buckets[part].append(comp.cls())
                    rows.append(_row(g, ts, f"{part}: FTICL − FT ({plain.label}), {c.shots}-shot P{c.prompt}", comp))
    va, ca = judge(buckets["a"], "not_less")
    vb, cb = judge(buckets["b"], "greater")
    vc, cc = judge(buckets["c"], "less")
    parts = [("a: generation FTICL keeps in-domain", va, ca), ("b: generation FTICL better OOD / cross-task", vb, cb),
             ("c: classification FTICL worse in-domain", vc, cc)]
    return Finding(5, "FTICL", "FTICL on generation: in-domain kept, out-of-domain and cross-task better than plain "
                   "fine-tuning. FTICL on classification: worse than plain fine-tuning in-domain.",
                   combine(parts), "", _COMP_HEADERS, rows, parts)


def run_table(s: SuiteData) -> list[dict]:
    """One row per fine-tuned run: its settings, weight deviation and training numbers."""
    out = {}
    for c in s.cells:
        ft = c.get("finetune")
        if not ft:
            continue
        run = ft.get("run") or c.get("model")
        if run in out:
            continue
        man = s.manifests.get(run) or {}
        wd = ft.get("weight_deviation")
        if wd is None:
            wd = man.get("weight_deviation")
        if isinstance(wd, Mapping):
            wd = wd.get("mean_abs_diff")
        train = man.get("training") if isinstance(man.get("training"), Mapping) else {}
        wall = train.get("wall_time_s", train.get("wall_s", man.get("wall_s", man.get("wall_time_s"))))
        tps = train.get("tokens_per_s", man.get("tokens_per_s"))
        trunc = man.get("truncation") if isinstance(man.get("truncation"), Mapping) else {}
        out[run] = {"run": run, "group": s.groups[group_key(c)], "base": c.get("base"), "task": ft.get("task"),
                    "dataset": ft.get("dataset"), "size": _eff_size(ft), "method": ft.get("method") or "full",
                    "icl": int(ft.get("icl_shots") or 0), "seed": ft.get("seed", man.get("seed")),
                    "wd": None if wd is None else float(wd), "wall": wall, "tps": tps,
                    "trunc": {k: v for k, v in trunc.items()  # the counts of what was cut
                              if isinstance(v, (int, float)) and ("cut" in k or "drop" in k)}}
    return sorted(out.values(), key=lambda r: (r["group"].sort_key(), str(r["seed"]), r["run"]))


def finding_weight_deviation(s: SuiteData) -> Finding:
    """(6) Each FTICL run vs the plain FT run with the same settings and seed: FTICL < FT."""
    runs = run_table(s)
    classes, rows = [], []
    for r in runs:
        g = r["group"]
        if g.is_plain or r["wd"] is None:
            continue
        plain = s.plain_match(g)
        if plain is None:
            continue
        match = [p for p in runs if p["group"] is plain and p["seed"] == r["seed"] and p["wd"] is not None]
        if not match:
            continue
        p = match[0]
        cls = "down" if r["wd"] < p["wd"] else "up"
        classes.append(cls)
        rows.append([r["run"], p["run"], f"{r['wd']:.3e}", f"{p['wd']:.3e}", f"{r['wd'] / p['wd']:.3f}"
                     if p["wd"] else "—", "FTICL < FT" if cls == "down" else "FTICL ≥ FT"])
    verdict, counts = judge(classes, "less")
    return Finding(6, "Weight deviation", "FTICL moves the weights less than plain fine-tuning (mean |Δw| 7.95e-5 "
                   "vs 8.54e-5 on SocialIQA, 8.03e-5 vs 1.0e-4 on XSum).", verdict,
                   counts.replace("comparisons", "run pairs")
                   + "; one deterministic number per checkpoint, no interval",
                   ["FTICL run", "FT run", "FTICL mean |Δw|", "FT mean |Δw|", "ratio", "class"], rows)


FINDINGS = [finding_in_domain, finding_train_size, finding_out_of_domain, finding_cross_task, finding_fticl,
            finding_weight_deviation]


def findings(s: SuiteData) -> list[Finding]:
    return [f(s) for f in FINDINGS]


# ---------------------------------------------------------------- markdown sections


def _esc(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(rows: list, headers: list) -> str:
    """A GitHub markdown table; cells are text (no number re-formatting), pipes escaped."""
    return tabulate([[_esc(x) for x in r] for r in rows], headers=[_esc(h) for h in headers], tablefmt="github",
                    disable_numparse=True)


def _uniq(values: Iterable) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _join(values: Iterable) -> str:
    vals = _uniq(values)
    return ", ".join(str(v) for v in vals) if vals else "—"


def _many(values: Iterable, most: int = 3) -> str:
    """Like _join, but a count instead of a wall of hashes (one harness hash per test set and prompt)."""
    u = _uniq(values)
    return _join(u) if len(u) <= most else f"{len(u)} distinct (one per task config; each cell's record holds its own)"


def _human_s(x: float) -> str:
    x = float(x)
    if x < 120:
        return f"{x:.1f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.2f} h"


def section_header(s: SuiteData) -> list[str]:
    prov = [c.get("provenance") or {} for c in s.cells]
    lines = [f"# genft report: {s.name}", ""]
    lines.append(
        f"{len(s.cells)} evaluation cells, {len(s.conds)} conditions, {len(s.groups) - len(s.bases)} fine-tuned "
        f"model groups on {len(s.bases)} base model(s). Primary metric: `acc_first` for classification (the "
        f"study's rule: the label whose first token is most probable at the first generated position) and ROUGE-L F "
        f"for generation, on a 0-1 scale. Fine-tuned cells read `score (change vs base [95% CI])`: the change is "
        f"against the base model at the same shots and prompt, the interval a paired bootstrap over the same test "
        f"items ({N_RESAMPLES} resamples of item indices, seed {BOOT_SEED}, percentile interval); ▲ / ▼ mark "
        f"intervals that exclude zero. Replicates of a condition (fine-tuning seeds, demonstration seeds) are "
        f"averaged per item first (see Seeds).")
    lines.append("")
    ft_wall = 0.0
    n_wall = 0
    runs = run_table(s)
    for r in runs:
        if r["wall"] is not None:
            ft_wall += float(r["wall"])
            n_wall += 1
    eval_wall = sum(float(c.get("wall_s") or 0) for c in s.cells)
    times = sorted(p.get("time") for p in prov if p.get("time"))
    ft_seeds = _uniq((c.get("finetune") or {}).get("seed") for c in s.cells if c.get("finetune"))
    demo_seeds = _uniq(c.get("demo_seed") for c in s.cells)
    rows = [
        ["suite", s.name],
        ["base models", _join(s.bases)],
        ["fine-tuned runs", str(len(runs))],
        ["genft", _join(p.get("genft") for p in prov)],
        ["lm-eval", _join(p.get("lm_eval") for p in prov)],
        ["torch", _join(p.get("torch") for p in prov)],
        ["transformers", _join(p.get("transformers") for p in prov)],
        ["backend", _join(p.get("backend") for p in prov)],
        ["batch size", _join(p.get("batch_size") for p in prov)],
        ["device", _join(p.get("device") for p in prov)],
        ["host", _join(p.get("hostname") for p in prov)],
        ["harness hash", _many(p.get("harness_hash") for p in prov)],
        ["evaluated", f"{times[0]} – {times[-1]}" if times else "—"],
        ["fine-tuning seeds", _join(ft_seeds)],
        ["demonstration seeds", _join(demo_seeds) if demo_seeds else "none (the study's fixed first-k demos)"],
        ["wall time: fine-tuning", f"{_human_s(ft_wall)} (sum over {n_wall} of {len(runs)} runs with a manifest)"
         if n_wall else "— (no training manifests)"],
        ["wall time: evaluation", f"{_human_s(eval_wall)} (sum over {len(s.cells)} cells)"],
    ]
    lines += ["## Provenance", "", _table(rows, ["", "value"]), ""]

    delims = _uniq(p.get("target_delimiter") for p in prov) + _uniq(c.get("target_delimiter") for c in s.cells)
    delim = (", ".join(repr(d) for d in _uniq(delims)) if delims
             else f"{TARGET_DELIMITER!r} (genft's default, the study's; not recorded in the cells)")
    settings = [
        ["target delimiter", delim],
        ["limit (first N test items)", _join(c.get("limit") if c.get("limit") is not None else "all" for c in s.cells)],
        ["prompts evaluated", _join(f"Prompt-{p}" for p in s.prompts())],
        ["shots", _join(sorted({int(c.get('shots') or 0) for c in s.cells}))],
        ["backend", _join(p.get("backend") for p in prov)],
    ]
    lines += ["## Settings", "", _table(settings, ["", "value"]), ""]

    data_rows = []
    for ts in s.test_sets:
        cs = [c for c in s.cells if c["task"] == ts.task and c["dataset"] == ts.dataset]
        hashes = _uniq((c.get("provenance") or {}).get("data_sha256") for c in cs)
        majority = _uniq(c.get("majority_rate") for c in cs)
        data_rows.append([ts.name, ts.domain, ts.kind, _join(c.get("n") for c in cs),
                          _join(_fmt(m) for m in majority) if majority else "—",
                          (", ".join(hashes) + (" ⚠ differs between cells" if len(hashes) > 1 else ""))
                          if hashes else "—"])
    lines += ["### Test sets", "", _table(data_rows, ["test set", "domain", "kind", "n items", "majority rate",
                                                      "data sha256"]), ""]

    model_rows = []
    for g in s.ordered_groups:
        if g.is_base:
            model_rows.append([g.label, g.base, "— (base model)", "", "", "", "", _join(g.runs)])
        else:
            model_rows.append([g.label, g.base, f"{g.task}/{g.dataset}", str(g.size), g.method,
                               f"{g.icl} ({g.ft.get('icl_demos') or 'fixed'})" if g.icl else "0 (plain)",
                               _join(g.seeds), _join(g.runs)])
    lines += ["### Models", "", _table(model_rows, ["model", "base", "fine-tuned on", "train size", "method",
                                                    "FTICL demos", "seeds", "runs"]), ""]
    return lines


def section_findings(fs: list[Finding]) -> list[str]:
    lines = ["## Findings of the study vs this suite", "",
             f"Each finding of STUDY.md §5 is checked by a small function over the cells (genft.report.finding_*). "
             f"A comparison is *up* / *down* when its 95% interval lies above / below zero, *flat* when it lies "
             f"inside ±{PAR_MARGIN}, *wide* otherwise. A claim holds when more than half of its comparisons support "
             f"it, does not hold when more than half contradict it, and is inconclusive otherwise; a claim with "
             f"parts holds when every part holds and fails when any part fails.", ""]
    summary = []
    for f in fs:
        ev = f.summary or "; ".join(f"{name}: {v} ({c})" for name, v, c in f.parts)
        summary.append([str(f.num), f.title, f.verdict, ev])
    lines += [_table(summary, ["#", "finding", "verdict", "evidence"]), ""]
    for f in fs:
        lines += [f"### {f.num}. {f.title}: {f.verdict}", "", f"Study: {f.claim}", ""]
        if f.summary:
            lines += [f"This suite: {f.summary}.", ""]
        for name, v, c in f.parts:
            lines.append(f"- {name}: **{v}** ({c})")
        if f.parts:
            lines.append("")
        if f.rows:
            lines += [_table(f.rows, f.headers), ""]
        elif f.verdict == NOT_MEASURED:
            lines += ["The cells this finding needs are not in this suite.", ""]
    return lines


def _base_title(s: SuiteData, base: str) -> str:
    return f" — base {base}" if len(s.bases) > 1 else ""


def section_same_task(s: SuiteData, domain: str) -> list[str]:
    num, what = (1, "in-domain") if domain == "in" else (2, "out-of-domain")
    lines = [f"## Setting {num}: same task, {what}", "",
             "Rows: the base model and the models fine-tuned (plain) on the task, by training size; columns: test "
             "set × shots.", ""]
    any_table = False
    for base in s.bases:
        bg = s.base_group(base)
        for task in TASK_ORDER + sorted({t.task for t in s.test_sets} - set(TASK_ORDER)):
            sets = [ts for ts in s.test_sets if ts.task == task and ts.domain == domain]
            groups = ([bg] if bg else []) + s.ft_groups(base, task)
            if not sets or len(groups) < 1:
                continue
            for prompt in s.prompts():
                cols = [(ts, k) for ts in sets for k in s.shots_for(ts, prompt, groups)]
                if not cols:
                    continue
                rows = []
                for g in groups:
                    cells = [s.cell_text(s.cond(g, ts, prompt, k)) for ts, k in cols]
                    if any(c != "—" for c in cells):
                        rows.append([g.label] + cells)
                if not rows:
                    continue
                any_table = True
                lines += [f"### {task}, Prompt-{prompt}{_base_title(s, base)}", "",
                          _table(rows, ["model"] + [f"{ts.dataset} {k}-shot" for ts, k in cols]), ""]
    if not any_table:
        lines += ["Not measured in this suite.", ""]
    return lines


def section_cross_task(s: SuiteData) -> list[str]:
    lines = ["## Setting 3: cross-task", "",
             "Rows: models fine-tuned (plain) on each task; columns: the test sets of the other tasks (· = the "
             "model's own task, see Settings 1-2). One table per prompt and shot count.", ""]
    any_table = False
    for base in s.bases:
        bg = s.base_group(base)
        groups = s.ft_groups(base)
        for prompt in s.prompts():
            shots = sorted({k[4] for k in s.conds if k[3] == prompt and
                            any(k[0] == g.key and k[1] != g.task for g in groups)})
            for k in shots:
                sets = [ts for ts in s.test_sets if any(
                    g.task != ts.task and s.cond(g, ts, prompt, k) is not None for g in groups)]
                if not sets:
                    continue
                rows = []
                if bg:
                    rows.append([bg.label] + [_fmt(getattr(s.cond(bg, ts, prompt, k), "score", None)) for ts in sets])
                for g in groups:
                    row = ["·" if ts.task == g.task else s.cell_text(s.cond(g, ts, prompt, k)) for ts in sets]
                    if any(x not in ("·", "—") for x in row):
                        rows.append([g.label] + row)
                any_table = True
                lines += [f"### Prompt-{prompt}, {k}-shot{_base_title(s, base)}", "",
                          _table(rows, ["model"] + [ts.name for ts in sets]), ""]
    if not any_table:
        lines += ["Not measured in this suite.", ""]
    return lines


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
                f0 = s.cond(g, ts, 1, 0)
                p0 = s.cond(plain, ts, 1, 0)
                fk = s.cond(g, ts, 1, k)
                bk = s.cond(bg, ts, 1, k)
                c0 = s.compare(f0, p0)
                ck = s.compare(fk, bk)
                rows.append([ts.name, setting, _fmt(getattr(bk, "score", None)), s.cell_text(p0) if p0 else "—",
                             f"{_fmt(f0.score)} ({c0.text()})" if c0 else (_fmt(f0.score) if f0 else "—"),
                             f"{_fmt(fk.score)} ({ck.text()})" if ck else (_fmt(fk.score) if fk else "—")])
            if not rows:
                continue
            any_table = True
            plain_label = plain.label if plain else "none"
            lines += [f"### {g.label} (plain FT: {plain_label}){_base_title(s, base)}", "",
                      _table(rows, ["test set", "setting", f"base {k}-shot", "FT 0-shot (vs base)",
                                    "FTICL 0-shot (vs FT)", f"FTICL {k}-shot (vs base {k}-shot)"]), ""]
    if not any_table:
        lines += ["Not measured in this suite.", ""]
    return lines


def section_seeds(s: SuiteData) -> list[str]:
    lines = ["## Seeds", "",
             "Conditions with more than one replicate (fine-tuning seeds and/or demonstration seeds). Interval: "
             "mean ± t(0.975, n−1)·sd/√n over the replicate scores (sample sd); min–max alongside.", ""]
    rows = []
    set_order = {(ts.task, ts.dataset): i for i, ts in enumerate(s.test_sets)}
    for key in sorted(s.conds, key=lambda k: (s.groups[k[0]].sort_key(), set_order[k[1], k[2]], k[3], k[4])):
        c = s.conds[key]
        if len(c.cells) < 2:
            continue
        vals = [x["metrics"].get(c.metric) for x in c.cells if x["metrics"].get(c.metric) is not None]
        agg = seed_interval(vals)
        ft_seeds = _uniq((x.get("finetune") or {}).get("seed") for x in c.cells)
        demo_seeds = _uniq(x.get("demo_seed") for x in c.cells)
        rows.append([c.group.label, f"{c.task}/{c.dataset}", f"P{c.prompt}", str(c.shots), str(agg["n"]),
                     _join(ft_seeds), _join(demo_seeds), c.metric, _fmt(agg["mean"]),
                     f"[{_fmt(agg['lo'])}, {_fmt(agg['hi'])}]", f"{_fmt(agg['min'])}–{_fmt(agg['max'])}"])
    if rows:
        lines += [_table(rows, ["model", "test set", "prompt", "shots", "replicates", "FT seeds", "demo seeds",
                                "metric", "mean", "95% t-interval", "min–max"]), ""]
    else:
        lines += ["Not measured in this suite: every condition has one replicate.", ""]
    return lines


def section_best_over_shots(s: SuiteData) -> list[str]:
    lines = ["## Best over shots (selected on the test set)", "",
             "The study's view for its FTICL figures: for each model and test set the best Prompt-1 score over the "
             "shot counts, with the shot count that gave it. **The shot count is chosen on the test set itself**, so "
             "these numbers are optimistic; the tables above compare at fixed shots.", ""]
    any_table = False
    for base in s.bases:
        for task in TASK_ORDER + sorted({t.task for t in s.test_sets} - set(TASK_ORDER)):
            sets = [ts for ts in s.test_sets if ts.task == task]
            rows = []
            for g in [x for x in s.ordered_groups if x.base == base]:
                cells = []
                for ts in sets:
                    cs = s.conds_of(g, ts, 1)
                    if cs:
                        best = max(cs, key=lambda c: (c.score, -c.shots))
                        cells.append(f"{_fmt(best.score)} (k={best.shots})")
                    else:
                        cells.append("—")
                if any(c != "—" for c in cells):
                    rows.append([g.label] + cells)
            if rows:
                any_table = True
                lines += [f"### {task} test sets{_base_title(s, base)}", "",
                          _table(rows, ["model"] + [ts.dataset for ts in sets]), ""]
    if not any_table:
        lines += ["Not measured in this suite.", ""]
    return lines


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
            sets = [ts for ts in s.test_sets if ts.task == task]
            rows = []
            for ts in sets:
                cells = [s.cell_text(s.cond(g, ts, 1, 0)) for g in groups]
                if any(c != "—" for c in cells):
                    rows.append([ts.dataset, ts.domain, _fmt(getattr(s.cond(bg, ts, 1, 0), "score", None))] + cells)
            if rows:
                any_table = True
                lines += [f"### {task}{_base_title(s, base)}", "",
                          _table(rows, ["test set", "domain", "base"] + [g.label for g in groups]), ""]
    if not any_table:
        lines += ["Not measured in this suite.", ""]
    if figure:
        lines += [f"![training-size curves]({figure})", ""]
    return lines


def section_weights(s: SuiteData) -> list[str]:
    lines = ["## Fine-tuned checkpoints: weight deviation and training", "",
             "Weight deviation: the mean absolute parameter difference from the base model over all parameters "
             "(STUDY.md §5). Truncation counts come from the training manifest.", ""]
    rows = []
    for r in run_table(s):
        trunc = ", ".join(f"{k} {v}" for k, v in sorted(r["trunc"].items())) or "—"
        rows.append([r["run"], r["group"].label, f"{r['task']}/{r['dataset']}", str(r["size"]), r["method"],
                     str(r["icl"]), str(r["seed"]), f"{r['wd']:.3e}" if r["wd"] is not None else "—",
                     _human_s(r["wall"]) if r["wall"] is not None else "—",
                     _fmt(float(r["tps"]), 1) if r["tps"] is not None else "—", trunc])
    if rows:
        lines += [_table(rows, ["run", "model", "trained on", "size", "method", "FTICL k", "seed", "mean |Δw|",
                                "train wall", "tokens/s", "truncation"]), ""]
    else:
        lines += ["Not measured in this suite: no fine-tuned models.", ""]
    return lines


def label_distribution(cell: Mapping, prefix: str) -> dict[str, float]:
    m = cell.get("metrics") or {}
    spec = TASKS.get(cell["task"])
    labels = list(spec.labels) if spec else sorted(k[len(prefix):] for k in m if k.startswith(prefix))
    return {lab: float(m[prefix + lab]) for lab in labels if prefix + lab in m}


def one_label(cell: Mapping) -> tuple[str, float] | None:
    """(label, share) when one label takes >= ONE_LABEL of the predictions (either rule), else None."""
    worst = None
    for prefix in ("predfirst_", "pred_"):
        dist = label_distribution(cell, prefix)
        if dist:
            lab = max(dist, key=lambda k: dist[k])
            if dist[lab] >= ONE_LABEL and (worst is None or dist[lab] > worst[1]):
                worst = (lab, dist[lab])
    return worst


def section_labels(s: SuiteData) -> list[str]:
    lines = ["## Classification: predicted labels vs accuracy", "",
             f"Per cell: accuracy under the study's first-token rule (`acc_first`) and the full-label rule (`acc`), "
             f"the majority-class rate of the test items (the floor a constant answer reaches), and the share of "
             f"items given each label. ⚠ marks a model answering one label for ≥ {ONE_LABEL:.0%} of the items.", ""]
    rows = []
    flagged = 0
    for c in s.cells:
        if task_kind(c["task"], c.get("metrics")) != "classification":
            continue
        m = c["metrics"]
        first = label_distribution(c, "predfirst_")
        full = label_distribution(c, "pred_")
        flag = one_label(c)
        flagged += flag is not None
        g = s.groups[group_key(c)]
        seed = f" (seed {c['finetune'].get('seed')})" if c.get("finetune") and len(g.seeds) > 1 else ""
        rows.append([g.label + seed,
                     f"{c['task']}/{c['dataset']}", f"P{c.get('prompt', 1)}", str(c.get("shots", 0)),
                     "—" if c.get("demo_seed") is None else str(c["demo_seed"]), str(c.get("n", "")),
                     _fmt(m.get("acc_first")), _fmt(m.get("acc")), _fmt(c.get("majority_rate")),
                     ", ".join(f"{k} {v:.2f}" for k, v in first.items()) or "—",
                     ", ".join(f"{k} {v:.2f}" for k, v in full.items()) or "—",
                     f"⚠ {flag[0]} {flag[1]:.0%}" if flag else ""])
    if rows:
        lines += [f"{flagged} of {len(rows)} classification cells answer one label for ≥ {ONE_LABEL:.0%} of the items.",
                  "", _table(rows, ["model", "test set", "prompt", "shots", "demo seed", "n", "acc_first", "acc",
                                    "majority", "predicted (first token)", "predicted (full label)", "flag"]), ""]
    else:
        lines += ["Not measured in this suite: no classification cells.", ""]
    return lines


def section_appendix(s: SuiteData) -> list[str]:
    lines = ["## Appendix: every cell", "",
             "All metrics of every evaluation cell (classification: `acc_first` = first-token rule, `acc` = full-label "
             "log-likelihood rule, `acc_norm` = length-normalised; generation: ROUGE F).", ""]
    rows = []
    for c in s.cells:
        m = c["metrics"]
        g = s.groups[group_key(c)]
        rows.append([g.label, str((c.get("finetune") or {}).get("seed", "—")), f"{c['task']}/{c['dataset']}",
                     c.get("domain", ""), f"P{c.get('prompt', 1)}", str(c.get("shots", 0)),
                     "—" if c.get("demo_seed") is None else str(c["demo_seed"]), str(c.get("n", "")),
                     _fmt(m.get("acc_first")), _fmt(m.get("acc")), _fmt(m.get("acc_norm")), _fmt(m.get("rougeL")),
                     _fmt(m.get("rouge1")), _fmt(m.get("rouge2")),
                     _fmt(float(c["wall_s"]), 1) if c.get("wall_s") is not None else "—"])
    lines += [_table(rows, ["model", "FT seed", "test set", "domain", "prompt", "shots", "demo seed", "n", "acc_first",
                            "acc", "acc_norm", "rougeL", "rouge1", "rouge2", "wall s"]), ""]
    return lines


# ---------------------------------------------------------------- figures


def _fig_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "svg.hashsalt": "genft"})
    return plt


def figure_heatmap(s: SuiteData, base: str, prompt: int = 1, shots: int = 0) -> bytes | None:
    """Rows: fine-tuned models; columns: test sets; colour: change vs base at the same shots and prompt."""
    groups = s.ft_groups(base, plain=None)
    sets = [ts for ts in s.test_sets if any(s.vs_base(s.cond(g, ts, prompt, shots)) for g in groups)]
    groups = [g for g in groups if any(s.vs_base(s.cond(g, ts, prompt, shots)) for ts in sets)]
    if not sets or not groups:
        return None
    plt = _pyplot()
    vals = np.full((len(groups), len(sets)), np.nan)
    sig = np.zeros_like(vals, dtype=bool)
    for i, g in enumerate(groups):
        for j, ts in enumerate(sets):
            comp = s.vs_base(s.cond(g, ts, prompt, shots))
            if comp is not None:
                vals[i, j] = comp.diff
                sig[i, j] = bool(comp.mark)
    lim = float(np.nanmax(np.abs(vals))) or 1.0
    label_w = 0.075 * max(len(g.label) for g in groups)  # inches for the row labels
    label_h = 0.065 * max(len(ts.name) for ts in sets)  # for the rotated column labels
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + label_w + 0.75 * len(sets)),
                                    max(3.0, 1.3 + label_h + 0.4 * len(groups))))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(groups)):
        for j in range(len(sets)):
            if not np.isnan(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:+.2f}{'*' if sig[i, j] else ''}", ha="center", va="center", fontsize=6,
                        color="white" if abs(vals[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(len(sets)), [ts.name for ts in sets], rotation=60, ha="right")
    ax.set_yticks(range(len(groups)), [g.label for g in groups])
    ax.set_title(f"change vs base ({base})\nPrompt-{prompt}, {shots}-shot; * = 95% CI excludes 0")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _fig_bytes(fig)


def figure_shots(s: SuiteData, base: str, task: str) -> bytes | None:
    """Score vs shots per test set of a task: the base model and the models fine-tuned on the task (Prompt-1)."""
    sets = [ts for ts in s.test_sets if ts.task == task]
    groups = [g for g in [s.base_group(base)] + s.ft_groups(base, task, plain=None) if g is not None]
    sets = [ts for ts in sets if any(len(s.conds_of(g, ts, 1)) > 1 for g in groups)]
    if not sets:
        return None
    plt = _pyplot()
    ncol = min(4, len(sets))
    nrow = math.ceil(len(sets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, ts in zip(axes.flat, sets):
        for g in groups:
            cs = s.conds_of(g, ts, 1)
            if cs:
                ax.plot([c.shots for c in cs], [c.score for c in cs], marker="o",
                        linestyle="--" if g.is_base else "-", label=g.label)
        ax.set_title(f"{ts.name} ({ts.domain})")
        ax.set_xticks(sorted({c.shots for g in groups for c in s.conds_of(g, ts, 1)}))
        ax.set_xlabel("shots")
        ax.set_ylabel(s.conds_of(groups[0], ts, 1)[0].metric if s.conds_of(groups[0], ts, 1) else "score")
    for ax in list(axes.flat)[len(sets):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return _fig_bytes(fig)


def figure_train_size(s: SuiteData, base: str) -> bytes | None:
    """Score vs training size per test set (plain FT, 0-shot, Prompt-1); base as a dotted line."""
    tasks = [t for t in TASK_ORDER if len({g.size for g in s.ft_groups(base, t)}) > 1]
    if not tasks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 2.8), squeeze=False)
    bg = s.base_group(base)
    for ax, task in zip(axes.flat, tasks):
        groups = s.ft_groups(base, task)
        for i, ts in enumerate(ts for ts in s.test_sets if ts.task == task):
            pts = sorted((g.size, s.cond(g, ts, 1, 0).score) for g in groups if s.cond(g, ts, 1, 0) is not None)
            if not pts:
                continue
            color = f"C{i % 10}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=ts.dataset)
            b = s.cond(bg, ts, 1, 0)
            if b is not None:
                ax.axhline(b.score, color=color, linestyle=":", linewidth=1)
        ax.set_xticks(sorted({g.size for g in groups if g.size is not None}))
        ax.set_title(f"{task} (dotted: base)")
        ax.set_xlabel("training examples")
        ax.set_ylabel("score, 0-shot")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _fig_bytes(fig)


def build(name: str, cells: Iterable[Mapping], manifests: Mapping | None = None,
          figures: bool = True) -> tuple[str, dict[str, bytes]]:
    """The markdown text and the figures ({file name: PNG bytes}), nothing written (figures=False: text only,
    the figure links left out)."""
    s = SuiteData(name, cells, manifests)
    fig_dir = _slug(name)
    figs: dict[str, bytes] = {}
    multi = len(s.bases) > 1

    def add(fname: str, make: Callable[[], bytes | None]) -> str | None:
        data = make() if figures else None
        if data is None:
            return None
        figs[fname] = data
        return f"{fig_dir}/{fname}"

    heat, shots, sizes = [], [], []
    for base in s.bases:
        pre = f"{_slug(base)}-" if multi else ""
        heat.append(add(f"{pre}heatmap-p1-0shot.png", lambda: figure_heatmap(s, base)))
        for task in TASK_ORDER:
            shots.append(add(f"{pre}shots-{task}.png", lambda: figure_shots(s, base, task)))
        sizes.append(add(f"{pre}train-size.png", lambda: figure_train_size(s, base)))

    lines = section_header(s)
    lines += section_findings(findings(s))
    lines += ["## Transfer matrix", ""]
    heat = [h for h in heat if h]
    lines += [f"![transfer matrix]({h})" for h in heat] or [
        "Not measured in this suite (no 0-shot Prompt-1 cells of a fine-tuned model with a matching base cell)."
        if figures else "Figures not rendered."]
    lines += [""]
    lines += section_same_task(s, "in")
    lines += section_same_task(s, "out")
    lines += section_cross_task(s)
    lines += section_fticl(s)
    lines += section_seeds(s)
    lines += section_best_over_shots(s)
    lines += section_train_size(s, next((x for x in sizes if x), None))
    lines += section_weights(s)
    lines += section_labels(s)
    shots = [x for x in shots if x]
    lines += ["## Shot curves", "",
              "Score vs shots, Prompt-1: the base model (dashed) and the models fine-tuned on the task.", ""]
    lines += [f"![shot curves]({x})" for x in shots] or [
        "Not measured in this suite (one shot count only)." if figures else "Figures not rendered."]
    lines += [""]
    lines += section_appendix(s)
    return "\n".join(lines).rstrip() + "\n", figs


# ---------------------------------------------------------------- writing


def _suite_name(arg: str | os.PathLike, cells: Sequence[Mapping]) -> str:
    names = _uniq(c.get("suite") for c in cells)
    if len(names) == 1:
        return str(names[0])
    p = Path(str(arg))
    return p.stem if p.suffix in (".json", ".yaml", ".yml", ".toml", ".jsonl") else p.name


def write_report(suite_path_or_name: str | os.PathLike, cells: Iterable[Mapping] | None = None,
                 manifests: Mapping[str, Mapping] | None = None, out_dir: str | os.PathLike = "reports") -> Path:
    """Write `<out_dir>/<suite>.md` and its figures `<out_dir>/<suite>/*.png`; returns the markdown path.

    With cells None the records are loaded through genft.suite (load_cells, load_manifests).  Everything is
    built in memory first; then each file is written to a temporary file and moved into place, the markdown
    last."""
    if cells is None:
        import importlib

        _suite = importlib.import_module("genft.suite")

        cells = _suite.load_cells(suite_path_or_name)
        if manifests is None and hasattr(_suite, "load_manifests"):
            manifests = _suite.load_manifests(suite_path_or_name)
    cells = list(cells)
    if not cells:
        raise FileNotFoundError(f"suite {suite_path_or_name}: no finished evaluation cells to report")
    name = _suite_name(suite_path_or_name, cells)
    text, figs = build(name, cells, manifests)
    out = Path(out_dir)
    for fname, data in sorted(figs.items()):
        atomic_write(out / _slug(name) / fname, data)
    md = out / f"{_slug(name)}.md"
    atomic_write(md, text.encode("utf-8"))
    return md
