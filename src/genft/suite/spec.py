"""A suite file resolved into a frozen `Suite`: every name checked against the data registry, the models and
the fine-tuning script's own validation, before any work.  Loads no model and needs no data.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import data as gdata
from ..models import ModelError, parse_ref
from ..prompts import FAMILIES, PROMPT_IDS, TASKS
from ..training import ConfigError, config_from_mapping, load_yaml_config, validate
from .report_settings import ReportSettings
from .schema import (NAME_PATTERN, SUITE_MANAGED, EvalSection, ExecutorSection, ModelSection, RunSection, StagesSection,
                     SuiteError, SuiteFile, Where, parse)

REPO = Path(__file__).resolve().parents[3]

PROMPT_KINDS = ("same_task", "cross_task", "base")

TestSet = tuple[str, str]  # (task, dataset)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    model: str  # a genft model name, an absolute folder, or a hub id
    dtype: str | None
    evaluate: bool


@dataclass(frozen=True)
class RunSpec:
    name: str  # the run's name in the suite file
    index: int  # its position under finetune:
    base: str  # a models id
    seeds: tuple[int, ...]
    explicit_seeds: bool
    values: dict  # finetune/sft.py settings (data + trainer + recipe), without the suite-managed ones
    recipe: str | None
    test_sets: tuple[TestSet, ...] | None  # None: every eval test set

    @property
    def method(self) -> str:
        return "lora" if self.values.get("use_peft") else "full"

    def run_names(self) -> list[tuple[str, int]]:
        """(checkpoint name, seed) of each checkpoint this run makes."""
        if not self.explicit_seeds:
            return [(self.name, self.seeds[0])]
        return [(f"{self.name}-seed{s}", s) for s in self.seeds]


@dataclass(frozen=True)
class EvalSpec:
    test_sets: tuple[TestSet, ...]
    shots: dict[str, list[int]]  # task -> shot counts
    prompts: dict[str, dict[str, list[int]]]  # same_task / cross_task / base -> task -> prompt ids
    limit: dict[str, int | None]  # task -> limit
    demos: str
    demo_seeds: tuple[int, ...]
    backend: str
    batch_size: int
    device: str
    group: str
    stages: StagesSection | None = None  # staged evaluation (stages.py); None: every item at once
    set_limit: dict[str, int | None] = field(default_factory=dict)  # test set -> limit, over its task's

    def limit_of(self, task: str, dataset: str) -> int | None:
        """The first N items of this test set that its cells hold (None: all)."""
        return self.set_limit[dataset] if dataset in self.set_limit else self.limit[task]


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    description: str
    source: str
    protocol: str
    data_dir: Path
    study_src: Path | None
    models: dict[str, ModelSpec]
    runs: tuple[RunSpec, ...]
    eval: EvalSpec
    output: Path
    threads: int | None
    report: ReportSettings
    executor: ExecutorSection

    @property
    def cells_dir(self) -> Path:
        return self.output / "cells"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output / "checkpoints"


# ---------------------------------------------------------------- helpers


def _int_list(w: Where, v: Any, path: tuple, minimum: int = 0) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise w.error(path, f"expected a non-empty list of integers, got {v!r}")
    if any(x < minimum for x in v):
        raise w.error(path, f"values must be >= {minimum}, got {v!r}")
    return sorted(set(v), key=v.index)


def _per_task(w: Where, v: Any, path: tuple, parse_value: Callable, default: Callable[[str], Any],
              nli_follows_classification: bool = False, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """A value for every task: one value, or a mapping over families (generation/classification/nli) and task
    names.  With nli_follows_classification, a `classification` value also covers NLI unless `nli` is given.
    `also`: other keys the caller takes out of the mapping itself (named in the unknown-key error)."""
    out = {t: default(t) for t in TASKS}
    if not isinstance(v, dict):
        val = parse_value(v, path)
        return {t: val for t in TASKS}
    for k in v:
        if k not in FAMILIES and k not in TASKS:
            raise w.error(path + (k,), f"unknown key {k!r}; allowed keys under {w.fmt(path)}: "
                                       f"{', '.join(FAMILIES + tuple(TASKS) + also)}")
    for fam in FAMILIES:  # families first, task names override
        if fam in v:
            val = parse_value(v[fam], path + (fam,))
            for t, spec in TASKS.items():
                if spec.family == fam or (nli_follows_classification and fam == "classification"
                                          and spec.family == "nli" and "nli" not in v):
                    out[t] = val
    for t in TASKS:
        if t in v:
            out[t] = parse_value(v[t], path + (t,))
    return out


def resolve_file(ref: str, suite_dir: Path) -> Path | None:
    p = Path(ref).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    return next(((base / p).resolve() for base in (Path.cwd(), suite_dir, REPO) if (base / p).is_file()), None)


def _model_ref(w: Where, ref: str, path: tuple) -> str:
    """A genft model name as is, a folder as its absolute path, a hub id as is (models.parse_ref's rule; a hub
    id is never loaded during validation)."""
    try:
        return parse_ref(ref).ref
    except ModelError as e:
        raise w.error(path, str(e)) from None


def known_train_sizes(info: gdata.DatasetInfo, root: Path) -> tuple[int, ...] | None:
    if gdata.dataset_dir(info.task, info.name, root).is_dir():
        sizes = gdata.train_sizes(info.task, info.name, root)
        if sizes:
            return tuple(sizes)
    if info.source == "builtin":
        return tuple(gdata.BUILTIN_TRAIN_SIZES)
    if info.source == "study":
        return gdata.study_train_sizes(info.name)
    return None


def demo_pool_size(info: gdata.DatasetInfo, root: Path) -> int:
    """The demo pool's size: from the data set's meta.json when present, else what the source is known to hold."""
    if (gdata.dataset_dir(info.task, info.name, root) / "meta.json").is_file():
        try:
            return int(gdata.read_meta(info.task, info.name, root)["files"]["demos"]["count"])
        except (KeyError, ValueError, TypeError, gdata.DataError):
            pass
    if info.source == "builtin":
        return gdata.BUILTIN_DEMO_POOL
    return gdata.study_demo_pool(info.name)


def _test_sets(w: Where, ts: Any, path: tuple, pool: list, what: str) -> tuple[TestSet, ...]:
    """'all' or a list of data set or task names -> (task, dataset) pairs of `pool`, in order, no repeats."""
    if ts == "all":
        return tuple((d.task, d.name) for d in pool)
    if isinstance(ts, str):
        ts = [ts]
    if not isinstance(ts, list) or not ts:
        raise w.error(path, f"expected 'all' or a list of data set / task names, got {ts!r}")
    out: list[TestSet] = []
    names = {d.name for d in pool}
    for j, ref in enumerate(ts):
        if ref in TASKS:
            found = [(d.task, d.name) for d in pool if d.task == ref]
        elif isinstance(ref, str) and ref in names:
            found = [(d.task, d.name) for d in pool if d.name == ref]
        else:
            raise w.error(path + (j,), f"unknown {what} {ref!r}; expected a task name ({', '.join(TASKS)}) "
                                       f"or one of: {', '.join(d.name for d in pool)}")
        out += [x for x in found if x not in out]
    return tuple(out)


# ---------------------------------------------------------------- runs and the grid


def _run(w: Where, i: int, run: RunSection, models: dict[str, ModelSpec], source: str, root: Path,
         suite_dir: Path) -> RunSpec:
    path = ("finetune", i)
    values: dict[str, Any] = {}
    recipe_seed = None
    recipe = None
    if run.recipe is not None:
        rp = resolve_file(run.recipe, suite_dir)
        if rp is None:
            raise w.error(path + ("recipe",), f"recipe file {run.recipe!r} not found (relative paths are looked up "
                                              f"from the current folder, the suite file's folder and {REPO})")
        try:
            rvals = load_yaml_config(rp)
        except ConfigError as e:
            raise w.error(path + ("recipe",), str(e)) from None
        recipe_seed = rvals.get("seed")
        values.update({k: v for k, v in rvals.items() if k not in SUITE_MANAGED})
        recipe = str(rp)
    # the run's own keys win over the recipe's: data keys at the run level, trainer keys under trainer:
    values.update({k: getattr(run, k) for k in run.model_fields_set if k in _DATA_KEYS})
    values.update({k: getattr(run.trainer, k) for k in run.trainer.model_fields_set})
    if run.evaluate_checkpoints is not None:
        values["step_models"] = list(run.evaluate_checkpoints)
    base = run.base
    if base is None:
        if len(models) != 1:
            raise w.error(path, f"base: required when the suite has several models ({', '.join(models)})")
        base = next(iter(models))
    if base not in models:
        raise w.error(path + ("base",), f"unknown model {base!r}; the suite's models are {', '.join(models)}")
    seeds = tuple(_int_list(w, run.seeds, path + ("seeds",))) if run.seeds is not None else (
        int(recipe_seed if recipe_seed is not None else 42),)
    task = values.get("task")
    if task not in TASKS:
        raise w.error(path + ("task",), f"{'required' if task is None else repr(task) + ' is not a task'}: one of "
                                        f"{', '.join(TASKS)}")
    if values.get("dataset") is None:
        values["dataset"] = gdata.train_dataset(task, source).name
    ds = values["dataset"]
    info = gdata.all_datasets().get(ds)
    if info is None or info.task != task or info.source != source or not info.trains:
        known = [d.name for d in gdata.datasets_for(task, source) if d.trains]
        raise w.error(path + ("dataset",), f"{ds!r} is not a {source} training data set of task {task}; "
                                           f"expected one of {', '.join(known)}")
    sizes = known_train_sizes(info, root)
    size = values.get("train_size", 2000)
    if sizes and size not in sizes:
        raise w.error(path + ("train_size",), f"{size}: {task}/{ds} has training sizes {', '.join(map(str, sizes))}")
    limit = values.get("train_limit")
    if isinstance(limit, int) and limit > size:
        raise w.error(path + ("train_limit",), f"{limit} is more than train_size {size}")
    k = values.get("icl_shots") or 0
    if k and values.get("icl_demos", "fixed") == "fixed" and k > demo_pool_size(info, root):
        raise w.error(path + ("icl_shots",), f"k={k} fixed demonstrations, but the demo pool of {task}/{ds} holds "
                                             f"{demo_pool_size(info, root)} items")
    try:  # the fine-tuning script's own checks (types, ranges), without touching any file
        validate(config_from_mapping({**values, "model_name_or_path": models[base].model,
                                      "output_dir": "/nonexistent", "seed": seeds[0]}, f"{w.path} finetune[{i}]"))
    except (ConfigError, gdata.DataError, TypeError) as e:
        raise w.error(path, str(e)) from None
    return RunSpec(name=run.name, index=i, base=base, seeds=seeds, explicit_seeds=run.seeds is not None,
                   values=values, recipe=recipe, test_sets=None)


_DATA_KEYS = tuple(k for k in RunSection.model_fields if k not in ("name", "base", "recipe", "seeds", "test_sets",
                                                                    "trainer", "evaluate_checkpoints"))


def _eval(w: Where, e: EvalSection, source: str, root: Path) -> EvalSpec:
    pool = [d for d in gdata.all_datasets().values() if d.source == source]
    test_sets = _test_sets(w, e.test_sets, ("eval", "test_sets"), pool, f"{source} data set")
    if e.shots == "study":
        shots = {t: list(spec.shots) for t, spec in TASKS.items()}
    else:
        shots = _per_task(w, e.shots, ("eval", "shots"), lambda v, p: _int_list(w, v, p),
                          lambda t: list(TASKS[t].shots))
    for task, name in test_sets:
        pool_n = demo_pool_size(gdata.all_datasets()[name], root)
        if max(shots[task]) > pool_n:
            raise w.error(("eval", "shots"), f"{max(shots[task])} shots for {task}/{name}, but its demo pool holds "
                                             f"{pool_n} items; use at most {pool_n}")

    def prompt_ids(v, path):
        ids = _int_list(w, v, path, minimum=1)
        bad = [p for p in ids if p not in PROMPT_IDS]
        if bad:
            raise w.error(path, f"unknown prompt {bad[0]}; genft has prompts {', '.join(map(str, PROMPT_IDS))}")
        return ids

    pr = e.prompts
    if isinstance(pr, dict):
        for k in pr:
            if k not in PROMPT_KINDS:
                raise w.error(("eval", "prompts", k), f"unknown key {k!r}; allowed keys under eval.prompts: "
                                                      f"{', '.join(PROMPT_KINDS)}")
        prompts = {k: _per_task(w, pr[k], ("eval", "prompts", k), prompt_ids, lambda t: [1]) if k in pr
                   else {t: [1] for t in TASKS} for k in PROMPT_KINDS}
    else:
        ids = prompt_ids(pr, ("eval", "prompts"))
        prompts = {k: {t: ids for t in TASKS} for k in PROMPT_KINDS}

    def parse_limit(v, path):
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise w.error(path, f"expected a positive number of items or null, got {v!r}")
        return v

    # a test set's own limit overrides its task's (where the planner asks for more items of some sets only)
    lim, set_limit, named = e.limit, {}, tuple(name for _, name in test_sets)
    if isinstance(lim, dict):
        for k in [k for k in lim if k not in FAMILIES and k not in TASKS and k in gdata.all_datasets()]:
            if k not in named:
                raise w.error(("eval", "limit", k), f"{k!r} is not one of the suite's test sets "
                                                    f"({', '.join(sorted(named))})")
            set_limit[k] = parse_limit(lim[k], ("eval", "limit", k))
        lim = {k: v for k, v in lim.items() if k not in set_limit}
    limit = _per_task(w, lim, ("eval", "limit"), parse_limit, lambda t: None, nli_follows_classification=True,
                      also=named)
    return EvalSpec(test_sets=test_sets, shots=shots, prompts=prompts, limit=limit, set_limit=set_limit, demos=e.demos,
                    demo_seeds=tuple(_int_list(w, e.demo_seeds, ("eval", "demo_seeds"))), backend=e.backend,
                    batch_size=e.batch_size, device=e.device, group=e.group, stages=e.stages)


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite file; raises SuiteError naming file, line and key.  Loads no model."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file (the shipped suites are in {REPO / 'suites'})")
    f, w, raw = parse(path)
    return _resolve(f, w, path)


def _resolve(f: SuiteFile, w: Where, path: Path) -> Suite:
    d = f.data
    root = gdata.data_dir(d.data_dir)
    study_src = None
    if d.study_src is not None:
        if d.source != "study":
            raise w.error(("data", "study_src"), "only for source: study")
        study_src = Path(d.study_src).expanduser()
        if not study_src.is_absolute() and not study_src.exists() and (path.parent / study_src).exists():
            study_src = path.parent / study_src
        study_src = study_src.resolve()
    models: dict[str, ModelSpec] = {}
    for mid, spec in f.models.items():
        if not isinstance(mid, str) or not re.match(NAME_PATTERN, mid):
            raise w.error(("models", mid), f"model id {mid!r}: use letters, digits, '.', '_', '-'")
        spec = ModelSection(model=spec) if isinstance(spec, str) else spec
        models[mid] = ModelSpec(id=mid, model=_model_ref(w, spec.model, ("models", mid, "model")), dtype=spec.dtype,
                                evaluate=spec.evaluate)
    runs = [_run(w, i, r, models, d.source, root, path.parent) for i, r in enumerate(f.finetune)]
    seen: set[str] = set()
    for r in runs:
        for rn, _ in r.run_names():
            if rn in seen or rn in models:
                raise w.error(("finetune", r.index, "name"), f"{rn!r} is used twice (runs and model ids must differ)")
            seen.add(rn)
    ev = _eval(w, f.eval, d.source, root)
    pool = [gdata.all_datasets()[ds] for _, ds in ev.test_sets]
    runs = [r if f.finetune[r.index].test_sets is None else _with_test_sets(r, _test_sets(
        w, f.finetune[r.index].test_sets, ("finetune", r.index, "test_sets"), pool, "test set (not in eval.test_sets)"))
        for r in runs]
    out = f.output.dir if not isinstance(f.output, str) and f.output is not None else f.output
    return Suite(path=path.resolve(), name=f.name, description=f.description, source=d.source, protocol=d.protocol,
                 data_dir=root,
                 study_src=study_src, models=models, runs=tuple(runs), eval=ev,
                 output=Path(out or f"runs/{f.name}").expanduser().resolve(), threads=f.threads,
                 report=f.report, executor=f.executor)


def _with_test_sets(r: RunSpec, test_sets: tuple[TestSet, ...]) -> RunSpec:
    return RunSpec(**{**r.__dict__, "test_sets": test_sets})


def output_of(suite: Suite | str | os.PathLike) -> Path:
    """A suite's output folder: of a Suite, a suite file, or an output folder itself."""
    if isinstance(suite, Suite):
        return suite.output
    p = Path(suite)
    return load_suite(p).output if p.is_file() else p.resolve()
