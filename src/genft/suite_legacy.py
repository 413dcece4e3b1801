"""Suites: the whole transfer matrix (fine-tunes x test sets x shots x prompts) from one YAML, resumable.

    genft suite run suites/smoke.yaml [--dry-run]

A suite file names base models, fine-tuning runs and the evaluation grid.  `load_suite` reads and validates it
(yaml.safe_load) before any work: an unknown key, task, data set, model reference or recipe file is a
`SuiteError` naming the file, the line, the key's path and what to do.  `plan` turns it into fine-tune jobs
and evaluation cells; `run_suite` runs what is missing.

Schema (every key optional unless marked; see suites/*.yaml for commented examples)::

    name: smoke                        # required: [A-Za-z0-9._-]+
    description: ...                   # free text
    threads: 1                         # torch threads for fine-tuning and evaluation (default: torch's / $OMP_NUM_THREADS)
    data:
      source: builtin                  # builtin | study (default study)
      data_dir: data                   # default $GENFT_DATA_DIR, else ./data
      study_src: ../shared/paper-data  # study only: import the release from here when data sets are missing
    models:                            # required: base models, id -> spec
      smollm2:
        model: smollm2-135m            # required: a genft model name, a local folder, or a hub id (owner/name)
        dtype: float32                 # evaluation dtype (float32 | bfloat16 | float16 | auto)
        evaluate: true                 # evaluate the base model itself (the baseline)
    finetune:                          # list of runs
      - name: lora-products            # required, unique
        base: smollm2                  # a models id (default: the only model)
        recipe: finetune/recipes/X.yaml  # an sft.py config; the run's own keys win
        task: sentiment                # required (here or in the recipe)
        dataset: builtin_products      # default: the task's training set of data.source
        method: lora                   # full | lora (default: the recipe's use_peft, else full)
        seeds: [1, 2]                  # one checkpoint per seed, named <name>-seed<s>; default: one, named <name>
        test_sets: [builtin_products]  # evaluate this run's checkpoints on these of eval.test_sets only
                                       # (data set or task names; default: all of them)
        # ... and any finetune/sft.py setting: train_size, train_limit, icl_shots, icl_demos, lora_r,
        # lora_alpha, lora_dropout, lora_target_modules, learning_rate, num_train_epochs, max_steps,
        # per_device_train_batch_size, gradient_accumulation_steps, lr_scheduler_type, warmup_steps,
        # weight_decay, max_length, prompt, dtype, bf16, ...
    eval:
      test_sets: all                   # all | list of data set names or task names (all sets of that task)
      shots: study                     # study (prompts.TASKS[...].shots) | {generation|classification|nli|<task>: [k, ...]}
      prompts: [1]                     # list for every cell, or {same_task: [1], cross_task: [1, 2], base: [1]};
                                       # each of those also as {generation|classification|nli|<task>: [...]}
                                       # (by the TEST set's task), e.g. cross_task: {generation: [1, 2], classification: [1]}
      limit: 250                       # first N test items; int | null | {generation|classification|nli|<task>: N}
                                       # (a classification limit also covers nli unless nli is given)
      demos: fixed                     # fixed (the study's first k) | random (seeded per item) | both
      demo_seeds: [0]                  # seeds for random demos
      backend: genft-hf                # genft-hf | hf | vllm (not part of the cell key: identical scores)
      batch_size: 8
      device: auto                     # auto (cuda if available) | cpu | cuda | cuda:N
      group: shots                     # shots: one lm-eval call per (checkpoint, shots) for all its test sets;
                                       # cell: one call per cell (finer resume, exact per-cell times)
    output: runs/smoke                 # default runs/<name>; also {dir: ...}

Output folder::

    <output>/plan.json                       the last plan (jobs, cells, keys, what was done)
    <output>/configs/<run>.yaml              each fine-tune's sft.py config
    <output>/checkpoints/<run>/              the fine-tuned model + genft_manifest.json (written by sft.py)
    <output>/cells/<key>.json                one finished cell (written atomically, last): see `cell_record`
    <output>/cells/<key>.samples.jsonl       lm-eval's per-item samples of that cell

A cell's key is the sha256 of everything that determines its numbers (`cell_key_material`); the backend and
batch size are not in it (recorded in provenance).  A finished suite re-run loads no model; an interrupted
one continues where it stopped; a changed setting re-runs exactly the cells it touches.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import data as gdata
from .files import atomic_write
from .harness import BACKENDS
from .prompts import TARGET_DELIMITER, TASKS, get_task

REPO = Path(__file__).resolve().parents[2]
SFT_SCRIPT = REPO / "finetune" / "sft.py"
CELL_VERSION = 1

TOP_KEYS = ("name", "description", "threads", "data", "models", "finetune", "eval", "output")
DATA_KEYS = ("source", "data_dir", "study_src")
MODEL_KEYS = ("model", "dtype", "evaluate")
RUN_KEYS = ("name", "base", "recipe", "method", "seeds", "test_sets")
EVAL_KEYS = ("test_sets", "shots", "prompts", "limit", "demos", "demo_seeds", "backend", "batch_size", "device",
             "group")
KIND_KEYS = ("generation", "classification", "nli")
PROMPT_KEYS = ("same_task", "cross_task", "base")
OUTPUT_KEYS = ("dir",)
SOURCES = ("builtin", "study")
METHODS = ("full", "lora")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DEMO_MODES = ("fixed", "random", "both")
GROUPS = ("shots", "cell")
# sft.py settings the suite decides itself (a run may not set them; a recipe's values are replaced).
SUITE_MANAGED = ("model_name_or_path", "output_dir", "data_dir", "use_peft", "seed")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# What the study's release holds (STUDY.md, ../shared/paper-data/README.md), for validation without data.
STUDY_TRAIN_SIZES = {"xsum": (2000,)}
STUDY_DEFAULT_TRAIN_SIZES = (2000, 4000, 6000)
STUDY_SMALL_POOLS = {"xsum": 4, "xlsum": 4, "peerread": 4, "cnndm": 4, "tweetqa": 4}
STUDY_POOL = 8

# The default time model: SmolLM2-135M on 2 CPU cores.  The plan refines it by the measured wall times of
# this suite's finished cells (per task kind) and fine-tunes.
EST_LOAD_S = 15.0
# Measured: SmolLM2-135M, genft-hf, 2 threads of an idle 2-core CPU, study-cpu (reports/study-cpu.md):
# classification 0.11-0.14 s/item at 0 and 2-3 shots; generation 0.5-1.6 s/item (20 items).  One thread or
# a machine shared with other work: about twice as long (EST_ONE_THREAD).
EST_CLS_ITEM_S = 0.12  # per classification item at 0 shots, for two labels
EST_CLS_SHOT = {"hf": 1.0, "genft-hf": 0.05, "vllm": 0.05}  # extra cost per demonstration, x the 0-shot cost
EST_GEN_ITEM_S = 1.2  # per generated item (up to 60 new tokens) ...
EST_GEN_SHOT_S = 0.1  # ... plus per demonstration
EST_ONE_THREAD = 2.0
EST_BACKEND_FACTOR = {"hf": 1.0, "genft-hf": 1.0, "vllm": 0.3}
EST_TRAIN_TOKENS_S = 85.0  # LoRA on SmolLM2-135M, 2 threads: 66-104 tokens/s measured (study-cpu)


class SuiteError(ValueError):
    """A bad suite file or a suite that cannot run: the message names file, line, key and what to do."""


# ====================================================================== loading and validation


@dataclass
class ModelSpec:
    id: str
    model: str
    dtype: str | None = None
    evaluate: bool = True


@dataclass
class RunSpec:
    name: str  # the run's name in the suite file
    base: str
    method: str
    seeds: list[int]
    explicit_seeds: bool
    values: dict  # sft.py settings (validated), without the suite-managed ones
    recipe: str | None = None
    index: int = 0
    test_sets: list[tuple[str, str]] | None = None  # (task, dataset) this run is evaluated on; None: all

    def run_names(self) -> list[tuple[str, int]]:
        if not self.explicit_seeds:
            return [(self.name, self.seeds[0])]
        return [(f"{self.name}-seed{s}", s) for s in self.seeds]


@dataclass
class EvalSpec:
    test_sets: list[tuple[str, str]]  # (task, dataset)
    shots: dict[str, list[int]]  # task -> shot counts
    prompts: dict[str, dict[str, list[int]]]  # same_task / cross_task / base -> task -> prompt ids
    limit: dict[str, int | None]  # task -> limit
    demos: str = "fixed"
    demo_seeds: list[int] = field(default_factory=lambda: [0])
    backend: str = "genft-hf"
    batch_size: int = 8
    device: str = "auto"
    group: str = "shots"


@dataclass
class Suite:
    path: Path
    name: str
    description: str
    source: str
    data_dir: Path
    study_src: Path | None
    models: dict[str, ModelSpec]
    runs: list[RunSpec]
    eval: EvalSpec
    output: Path
    threads: int | None = None

    @property
    def cells_dir(self) -> Path:
        return self.output / "cells"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output / "checkpoints"


class _Where:
    """Error messages with the file, the line (from the YAML node tree) and the key's path."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            import yaml

            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if node is not None:
                self._walk(node, ())
        except Exception:  # noqa: BLE001  (line numbers are a nicety; safe_load reports real YAML errors)
            pass

    def _walk(self, node, path):
        import yaml

        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (getattr(k, "value", None),)
                self.lines[key] = k.start_mark.line + 1
                self._walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def fmt(self, path: tuple) -> str:
        out = ""
        for p in path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out or "(top level)"

    def error(self, path: tuple, msg: str) -> SuiteError:
        line = None
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                line = self.lines[path[:n]]
                break
        loc = f"{self.path}:{line}" if line else str(self.path)
        return SuiteError(f"{loc}: {self.fmt(path)}: {msg}")


def _check_keys(w: _Where, obj: Any, path: tuple, allowed: Sequence[str], what: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise w.error(path, f"expected a mapping ({what}), got {type(obj).__name__}")
    for k in obj:
        if k not in allowed:
            raise w.error(path + (k,), f"unknown key {k!r}; allowed keys under {w.fmt(path)}: {', '.join(allowed)}")
    return obj


def _int_list(w: _Where, v: Any, path: tuple, minimum: int = 0) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise w.error(path, f"expected a non-empty list of integers, got {v!r}")
    if any(x < minimum for x in v):
        raise w.error(path, f"values must be >= {minimum}, got {v!r}")
    return sorted(set(v), key=v.index)


def task_kind(task: str) -> str:
    """generation, classification (2-way) or nli (3-way): the study's shot-count families."""
    spec = get_task(task)
    if not spec.is_classification:
        return "generation"
    return "nli" if len(spec.labels) > 2 else "classification"


def _per_task(w: _Where, v: Any, path: tuple, parse: Callable, default: Callable[[str], Any],
              nli_follows_classification: bool = False) -> dict[str, Any]:
    """A value for every task: one value, or a mapping over kinds (generation/classification/nli) and task names.
    With nli_follows_classification, a `classification` value also covers NLI unless `nli` is given."""
    out = {t: default(t) for t in TASKS}
    if isinstance(v, dict):
        allowed = KIND_KEYS + tuple(TASKS)
        _check_keys(w, v, path, allowed, "task kinds or task names")
        for kind in KIND_KEYS:  # kinds first, task names override
            if kind in v:
                val = parse(v[kind], path + (kind,))
                for t in TASKS:
                    k = task_kind(t)
                    if k == kind or (nli_follows_classification and kind == "classification" and k == "nli"
                                     and "nli" not in v):
                        out[t] = val
        for t in TASKS:
            if t in v:
                out[t] = parse(v[t], path + (t,))
        return out
    val = parse(v, path)
    return {t: val for t in TASKS}


def _resolve_file(ref: str, suite_dir: Path) -> Path | None:
    p = Path(ref).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (Path.cwd(), suite_dir, REPO):
        if (base / p).is_file():
            return (base / p).resolve()
    return None


def _check_model_ref(w: _Where, ref: Any, path: tuple) -> str:
    from .models import NAMED

    if not isinstance(ref, str) or not ref.strip():
        raise w.error(path, f"expected a model reference (a genft model name, a folder or a hub id), got {ref!r}")
    if ref in NAMED:
        return ref
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise w.error(path, f"{p} is not a model folder (no config.json)")
        return str(p.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise w.error(path, f"unknown model {ref!r}: not a genft model name ({', '.join(NAMED)}), not an existing "
                            f"folder, and not a hub id (owner/name); run `genft model prepare NAME` or fix the path")
    return ref  # a hub id: never loaded during validation


def _known_train_sizes(info: gdata.DatasetInfo, root: Path) -> tuple[int, ...] | None:
    sizes = gdata.train_sizes(info.task, info.name, root) if gdata.dataset_dir(info.task, info.name, root).is_dir() else []
    if sizes:
        return tuple(sizes)
    if info.source == "builtin":
        return tuple(gdata.BUILTIN_TRAIN_SIZES)
    if info.source == "study":
        return STUDY_TRAIN_SIZES.get(info.name, STUDY_DEFAULT_TRAIN_SIZES)
    return None


def demo_pool_size(info: gdata.DatasetInfo, root: Path) -> int:
    """The demo pool's size: from the data set's meta.json when present, else what the source is known to hold."""
    meta = gdata.dataset_dir(info.task, info.name, root) / "meta.json"
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text())["files"]["demos"]["count"])
        except (KeyError, ValueError, TypeError, json.JSONDecodeError):
            pass
    if info.source == "builtin":
        return gdata.BUILTIN_DEMO_POOL
    return STUDY_SMALL_POOLS.get(info.name, STUDY_POOL)


def _coerce(name: str, value: Any, w: _Where, path: tuple) -> Any:
    """YAML values -> the types of FinetuneConfig's fields (YAML 1.1 reads 2e-4 as a string)."""
    from .training import FinetuneConfig

    ann = str(next(f.type for f in dataclasses.fields(FinetuneConfig) if f.name == name))
    if value is None:
        return None
    try:
        if ann.startswith("float") and not isinstance(value, bool) and isinstance(value, (int, float, str)):
            return float(value)
        if ann.startswith("int") and isinstance(value, float) and value.is_integer():
            return int(value)
        if ann.startswith("int") and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    except ValueError:
        raise w.error(path, f"expected a number, got {value!r}") from None
    return value


def _load_run(w: _Where, i: int, raw: Any, suite: dict, models: dict[str, ModelSpec], source: str,
              root: Path, suite_dir: Path) -> RunSpec:
    from .training import FIELDS, ConfigError, config_from_mapping, load_yaml_config, validate

    path = ("finetune", i)
    allowed_settings = [f for f in FIELDS if f not in SUITE_MANAGED]
    allowed = RUN_KEYS + tuple(allowed_settings)
    _check_keys(w, raw, path, allowed, "a fine-tuning run")
    if not raw:
        raise w.error(path, "empty run: give at least name and task")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise w.error(path + ("name",), f"required: a run name of letters, digits, '.', '_', '-' (got {name!r})")
    values: dict[str, Any] = {}
    recipe = raw.get("recipe")
    recipe_seed = None
    recipe_peft = None
    if recipe is not None:
        rp = _resolve_file(str(recipe), suite_dir) if isinstance(recipe, str) else None
        if rp is None:
            raise w.error(path + ("recipe",), f"recipe file {recipe!r} not found (relative paths are looked up from "
                                              f"the current folder, the suite file's folder and {REPO})")
        try:
            rvals = load_yaml_config(rp)
        except ConfigError as e:
            raise w.error(path + ("recipe",), str(e)) from None
        recipe_seed = rvals.pop("seed", None)
        recipe_peft = rvals.pop("use_peft", None)
        for k in SUITE_MANAGED:
            rvals.pop(k, None)  # the suite decides model, output and data folders
        values.update(rvals)
        recipe = str(rp)
    for k, v in raw.items():
        if k not in RUN_KEYS:
            values[k] = _coerce(k, v, w, path + (k,))
    for k in list(values):
        values[k] = _coerce(k, values[k], w, path + (k,))
    # base
    base = raw.get("base")
    if base is None:
        if len(models) != 1:
            raise w.error(path, f"base: required when the suite has several models ({', '.join(models)})")
        base = next(iter(models))
    if base not in models:
        raise w.error(path + ("base",), f"unknown model {base!r}; the suite's models are {', '.join(models) or 'none'}")
    # method
    method = raw.get("method")
    if method is None:
        method = "lora" if recipe_peft else "full"
    if method not in METHODS:
        raise w.error(path + ("method",), f"{method!r}; expected one of {', '.join(METHODS)}")
    # seeds
    explicit = "seeds" in raw
    seeds = _int_list(w, raw["seeds"], path + ("seeds",)) if explicit else [int(recipe_seed if recipe_seed is not None else 42)]
    # task / dataset against the suite's data source
    task = values.get("task")
    if task not in TASKS:
        raise w.error(path + ("task",), f"{'required' if task is None else repr(task) + ' is not a task'}: one of "
                                        f"{', '.join(TASKS)}")
    if values.get("dataset") is None:
        values["dataset"] = gdata.train_dataset(task, source).name
    ds = values["dataset"]
    info = gdata.all_datasets().get(ds)
    if info is None or info.task != task or info.source != source:
        known = [d.name for d in gdata.datasets_for(task, source) if d.trains]
        raise w.error(path + ("dataset",), f"{ds!r} is not a {source} training data set of task {task}; "
                                           f"expected one of {', '.join(known)}")
    if not info.trains:
        raise w.error(path + ("dataset",), f"{ds!r} has no training splits; the {task} training set of {source} "
                                           f"is {gdata.train_dataset(task, source).name}")
    sizes = _known_train_sizes(info, root)
    size = values.get("train_size", 2000)
    if sizes and size not in sizes:
        raise w.error(path + ("train_size",), f"{size}: {task}/{ds} has training sizes {', '.join(map(str, sizes))}")
    limit = values.get("train_limit")
    if isinstance(limit, int) and limit > size:
        raise w.error(path + ("train_limit",), f"{limit} is more than train_size {size}")
    k = values.get("icl_shots", 0) or 0
    if k and values.get("icl_demos", "fixed") == "fixed" and k > demo_pool_size(info, root):
        raise w.error(path + ("icl_shots",), f"k={k} fixed demonstrations, but the demo pool of {task}/{ds} holds "
                                             f"{demo_pool_size(info, root)} items")
    # the fine-tuning script's own checks (types, ranges), without touching any file
    try:
        cfg = config_from_mapping({**values, "model_name_or_path": models[base].model, "output_dir": "/nonexistent",
                                   "use_peft": method == "lora", "seed": seeds[0]}, f"{w.path} finetune[{i}]")
        validate(cfg)
    except (ConfigError, gdata.DataError, TypeError) as e:
        raise w.error(path, str(e)) from None
    return RunSpec(name=name, base=base, method=method, seeds=seeds, explicit_seeds=explicit, values=values,
                   recipe=recipe, index=i)


def _test_sets(w: _Where, ts: Any, path: tuple, pool: list, what: str) -> list[tuple[str, str]]:
    """A list of data set or task names (or 'all') -> (task, dataset) pairs of `pool`, in order, no repeats."""
    if ts == "all":
        return [(d.task, d.name) for d in pool]
    if isinstance(ts, str):
        ts = [ts]
    if not isinstance(ts, list) or not ts:
        raise w.error(path, f"expected 'all' or a list of data set / task names, got {ts!r}")
    out: list[tuple[str, str]] = []
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
    return out


def _load_eval(w: _Where, raw: Any, source: str, root: Path) -> EvalSpec:
    e = _check_keys(w, raw, ("eval",), EVAL_KEYS, "the evaluation grid")
    # test sets
    pool = [d for d in gdata.all_datasets().values() if d.source == source]
    test_sets = _test_sets(w, e.get("test_sets", "all"), ("eval", "test_sets"), pool, f"{source} data set")
    # shots
    shots_raw = e.get("shots", "study")

    def parse_shots(v, path):
        return _int_list(w, v, path)

    if shots_raw == "study":
        shots = {t: list(TASKS[t].shots) for t in TASKS}
    else:
        shots = _per_task(w, shots_raw, ("eval", "shots"), parse_shots, lambda t: list(TASKS[t].shots))
    for task, name in test_sets:
        info = gdata.all_datasets()[name]
        pool_n = demo_pool_size(info, root)
        if max(shots[task]) > pool_n:
            raise w.error(("eval", "shots"), f"{max(shots[task])} shots for {task}/{name}, but its demo pool holds "
                                             f"{pool_n} items; use at most {pool_n}")
    # prompts
    pr = e.get("prompts", [1])

    def parse_prompts(v, path):
        ids = _int_list(w, v, path, minimum=1)
        bad = [p for p in ids if p not in (1, 2)]
        if bad:
            raise w.error(path, f"unknown prompt {bad[0]}; genft has prompts 1 and 2")
        return ids

    if isinstance(pr, dict):
        _check_keys(w, pr, ("eval", "prompts"), PROMPT_KEYS, "prompts per kind of cell")
        prompts = {k: _per_task(w, pr[k], ("eval", "prompts", k), parse_prompts, lambda t: [1]) if k in pr
                   else {t: [1] for t in TASKS} for k in PROMPT_KEYS}
    else:
        ids = parse_prompts(pr, ("eval", "prompts"))
        prompts = {k: {t: ids for t in TASKS} for k in PROMPT_KEYS}
    # limit

    def parse_limit(v, path):
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise w.error(path, f"expected a positive number of items or null, got {v!r}")
        return v

    limit = _per_task(w, e.get("limit"), ("eval", "limit"), parse_limit, lambda t: None, nli_follows_classification=True)
    demos = e.get("demos", "fixed")
    if demos not in DEMO_MODES:
        raise w.error(("eval", "demos"), f"{demos!r}; expected one of {', '.join(DEMO_MODES)}")
    demo_seeds = _int_list(w, e["demo_seeds"], ("eval", "demo_seeds")) if "demo_seeds" in e else [0]
    backend = e.get("backend", "genft-hf")
    if backend not in BACKENDS:
        raise w.error(("eval", "backend"), f"{backend!r}; expected one of {', '.join(BACKENDS)}")
    bs = e.get("batch_size", 8)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise w.error(("eval", "batch_size"), f"expected a positive integer, got {bs!r}")
    device = e.get("device", "auto")
    if not isinstance(device, str) or not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", device):
        raise w.error(("eval", "device"), f"{device!r}; expected auto, cpu, cuda or cuda:N")
    group = e.get("group", "shots")
    if group not in GROUPS:
        raise w.error(("eval", "group"), f"{group!r}; expected one of {', '.join(GROUPS)}")
    return EvalSpec(test_sets=test_sets, shots=shots, prompts=prompts, limit=limit, demos=demos,
                    demo_seeds=demo_seeds, backend=backend, batch_size=bs, device=device, group=group)


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite file; raises SuiteError.  Loads no model and needs no data."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file (the shipped suites are in {REPO / 'suites'})")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML ({e})") from None
    w = _Where(path, text)
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    _check_keys(w, raw, (), TOP_KEYS, "a suite")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise w.error(("name",), f"required: a suite name of letters, digits, '.', '_', '-' (got {name!r})")
    threads = raw.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise w.error(("threads",), f"expected a positive integer, got {threads!r}")
    # data
    d = _check_keys(w, raw.get("data"), ("data",), DATA_KEYS, "the data source")
    source = d.get("source", "study")
    if source not in SOURCES:
        raise w.error(("data", "source"), f"{source!r}; expected one of {', '.join(SOURCES)}")
    root = gdata.data_dir(d.get("data_dir"))
    study_src = None
    if d.get("study_src") is not None:
        if source != "study":
            raise w.error(("data", "study_src"), "only for source: study")
        study_src = Path(str(d["study_src"])).expanduser()
        if not study_src.is_absolute() and not study_src.exists():
            alt = path.parent / study_src
            study_src = alt if alt.exists() else study_src
        study_src = study_src.resolve()
    # models
    ms = raw.get("models")
    if not isinstance(ms, dict) or not ms:
        raise w.error(("models",), "required: a mapping of base model ids, e.g. {smollm2: {model: smollm2-135m}}")
    models: dict[str, ModelSpec] = {}
    for mid, spec in ms.items():
        mpath = ("models", mid)
        if not isinstance(mid, str) or not NAME_RE.match(mid):
            raise w.error(mpath, f"model id {mid!r}: use letters, digits, '.', '_', '-'")
        if isinstance(spec, str):
            spec = {"model": spec}
        _check_keys(w, spec, mpath, MODEL_KEYS, "a model")
        if "model" not in spec:
            raise w.error(mpath, "model: required (a genft model name, a folder or a hub id)")
        ref = _check_model_ref(w, spec["model"], mpath + ("model",))
        dtype = spec.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise w.error(mpath + ("dtype",), f"{dtype!r}; expected one of {', '.join(DTYPES)}")
        ev = spec.get("evaluate", True)
        if not isinstance(ev, bool):
            raise w.error(mpath + ("evaluate",), f"expected true or false, got {ev!r}")
        models[mid] = ModelSpec(id=mid, model=ref, dtype=dtype, evaluate=ev)
    # fine-tuning runs
    ft = raw.get("finetune") or []
    if not isinstance(ft, list):
        raise w.error(("finetune",), "expected a list of runs")
    runs = [_load_run(w, i, r, raw, models, source, root, path.parent) for i, r in enumerate(ft)]
    seen: dict[str, int] = {}
    for r in runs:
        for rn, _ in r.run_names():
            if rn in seen or rn in models:
                raise w.error(("finetune", r.index, "name"), f"{rn!r} is used twice (runs and model ids must differ)")
            seen[rn] = r.index
    ev = _load_eval(w, raw.get("eval"), source, root)
    # a run's own test sets: a subset of the evaluation grid's (a run evaluated on fewer sets, e.g. an extra
    # training size checked in-domain only)
    pool = [gdata.all_datasets()[ds] for _, ds in ev.test_sets]
    for r, item in zip(runs, ft):
        if item.get("test_sets") is not None:
            r.test_sets = _test_sets(w, item["test_sets"], ("finetune", r.index, "test_sets"), pool,
                                     "test set (not in eval.test_sets)")
    # output
    out = raw.get("output")
    if isinstance(out, dict):
        _check_keys(w, out, ("output",), OUTPUT_KEYS, "the output folder")
        out = out.get("dir")
    if out is not None and not isinstance(out, str):
        raise w.error(("output",), f"expected a folder path, got {out!r}")
    output = Path(out or f"runs/{name}").expanduser().resolve()
    desc = raw.get("description") or ""
    return Suite(path=path.resolve(), name=name, description=str(desc), source=source, data_dir=root,
                 study_src=study_src, models=models, runs=runs, eval=ev, output=output, threads=threads)


def _as_suite(suite: Suite | str | os.PathLike) -> Suite:
    return suite if isinstance(suite, Suite) else load_suite(suite)


# ====================================================================== planning


@dataclass
class FinetuneJob:
    run: str  # checkpoint name (the run's name, + -seed<s> with explicit seeds)
    spec: RunSpec
    seed: int
    config: dict  # the sft.py config (validated FinetuneConfig as a dict)
    out_dir: Path
    config_path: Path
    config_hash: str | None  # training.config_hash: None while the training data is missing
    status: str = "todo"  # done | resume | todo | retrain
    tokens_est: int = 0
    est_s: float = 0.0


@dataclass
class Checkpoint:
    id: str  # the cell's "model": a run name or a base id
    kind: str  # base | finetuned
    base: str  # base model id
    path: str  # what lm-eval loads (folder or hub id)
    dtype: str | None
    identity: dict | None  # None: not known yet (a model not provisioned, data missing)
    job: FinetuneJob | None = None

    @property
    def task(self) -> str | None:
        return self.job.config["task"] if self.job else None


@dataclass
class Cell:
    checkpoint: Checkpoint
    task: str
    dataset: str
    domain: str
    prompt: int
    shots: int
    limit: int | None
    demo_seed: int | None
    key: str | None
    material: dict | None
    n_est: int
    est_s: float = 0.0
    done: bool = False

    @property
    def task_name(self) -> str:
        from .harness import task_name

        return task_name(self.task, self.dataset, self.prompt)

    @property
    def kind(self) -> str:
        return task_kind(self.task)

    def label(self) -> str:
        demos = "" if self.demo_seed is None else f" random demos seed {self.demo_seed}"
        return f"{self.task_name} {self.shots}-shot{demos} on {self.checkpoint.id}"


@dataclass
class Plan:
    suite: Suite
    jobs: list[FinetuneJob]
    checkpoints: list[Checkpoint]
    cells: list[Cell]
    missing_data: list[str]
    ratios: dict[str, float]  # measured / default time per task kind (1.0 when nothing is measured)
    train_tps: float

    @property
    def todo_cells(self) -> list[Cell]:
        return [c for c in self.cells if not c.done]

    @property
    def todo_jobs(self) -> list[FinetuneJob]:
        return [j for j in self.jobs if j.status != "done"]

    def estimate(self) -> dict[str, float]:
        cells = sum(c.est_s * self.ratios.get(c.kind, 1.0) for c in self.todo_cells)
        loads = EST_LOAD_S * len({c.checkpoint.id for c in self.todo_cells})
        train = sum(j.est_s for j in self.todo_jobs)
        return {"finetune": train, "eval": cells + loads, "total": train + cells + loads}


_SHA_CACHE: dict[tuple, str] = {}


def _sha_file(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = gdata.file_sha256(path)
    return _SHA_CACHE[key]


def harness_files(task: str, dataset: str, prompt: int) -> list[Path]:
    """The files that determine a cell's prompts and scores: its task YAML, the templates it includes, the
    task loader/scorer (harness_tasks/utils.py) and the genft modules they render and score with."""
    from .harness import task_name, tasks_dir

    root = tasks_dir()
    kind = "generation" if task_kind(task) == "generation" else "classification"
    files = [root / f"_genft_{kind}.yaml", root / task / f"_{task}.yaml",
             root / task / f"{task_name(task, dataset, prompt)}.yaml", root / "utils.py",
             Path(__file__).with_name("metrics.py"), Path(__file__).with_name("prompts.py")]
    return files


def harness_hash(task: str, dataset: str, prompt: int) -> str:
    h = hashlib.sha256()
    for p in harness_files(task, dataset, prompt):
        h.update(p.name.encode())
        h.update((_sha_file(p) if p.is_file() else "missing").encode())
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_write_atomic = atomic_write


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n").encode("utf-8"))


# ---------------------------------------------------------------- model identity


def _fingerprint_cached(folder: Path, cache_file: Path | None, write: bool = True) -> str:
    """models.fingerprint, cached by the folder's file names, sizes and mtimes (hashing 500 MB takes seconds)."""
    from .models import MARKER, fingerprint

    stat = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                  if p.is_file() and p.suffix in {".safetensors", ".json", ".bin", ".model"} and p.name != MARKER)
    sig = hashlib.sha256(json.dumps([str(folder.resolve()), stat]).encode()).hexdigest()
    cache = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    if sig in cache:
        return cache[sig]
    fp = fingerprint(folder)
    if cache_file and write:
        cache[sig] = fp
        try:
            _write_json(cache_file, cache)
        except OSError:
            pass
    return fp


def base_identity(ref: str, cache_file: Path | None = None, provision: bool = False) -> tuple[str, dict | None]:
    """(what lm-eval loads, identity) of a model the suite did not train.  A genft name's folder is
    fingerprinted once provisioned (provision=True builds it and may write the fingerprint cache); a hub id is identified by its id (and the
    cached revision, if any), since validation and planning never download."""
    from .models import MARKER, NAMED, genft_home, prepare

    if ref in NAMED:
        folder = genft_home() / "models" / ref
        if not (folder / MARKER).is_file():
            if not provision:
                return str(folder), None
            folder = prepare(ref)
        return str(folder), {"weights": _fingerprint_cached(folder, cache_file, provision)}
    p = Path(ref)
    if p.is_dir():
        return str(p), {"weights": _fingerprint_cached(p, cache_file, provision)}
    ident: dict = {"hub": ref}
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
    refs = hub / ("models--" + ref.replace("/", "--")) / "refs" / "main"
    if refs.is_file():
        ident["revision"] = refs.read_text().strip()
    return ref, ident


# ---------------------------------------------------------------- jobs and cells


def _finetune_config(suite: Suite, spec: RunSpec, seed: int, out_dir: Path):
    from .training import config_from_mapping, validate

    values = dict(spec.values)
    values.update(model_name_or_path=suite.models[spec.base].model, output_dir=str(out_dir),
                  data_dir=str(suite.data_dir), use_peft=spec.method == "lora", seed=seed)
    if suite.threads and values.get("torch_threads") is None:
        values["torch_threads"] = suite.threads
    return validate(config_from_mapping(values, str(suite.path)))


def _estimate_tokens(cfg, root: Path) -> int:
    """Rough training tokens (chars / 3.5 of prompt + target, demos included), times epochs."""
    folder = gdata.dataset_dir(cfg.task, cfg.dataset, root)
    path = folder / f"train_{cfg.train_size}.jsonl"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        n = min(len(lines), cfg.train_limit or len(lines))
        per = sum(len(line) for line in lines[:n]) / max(n, 1)
    else:  # data not there yet: typical item sizes in characters
        n = min(cfg.train_size, cfg.train_limit or cfg.train_size)
        info = gdata.all_datasets()[cfg.dataset]
        per = 200 if info.source == "builtin" else {"summary": 2000}.get(cfg.task, 400)
    if cfg.icl_shots:
        per *= 1 + cfg.icl_shots
    steps_items = n * cfg.num_train_epochs
    if cfg.max_steps and cfg.max_steps > 0:
        steps_items = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return int(steps_items * min((per + 40) / 3.5, cfg.max_length))


def default_cell_seconds(task: str, shots: int, n: int, backend: str) -> float:
    """The default time model of one cell (before refinement by measured cells): SmolLM2-135M on CPU.
    genft-hf scores the demonstrations' shared prefix once, so shots cost it less than hf."""
    spec = get_task(task)
    if spec.is_classification:
        per = EST_CLS_ITEM_S * (1 + EST_CLS_SHOT.get(backend, 1.0) * shots) * len(spec.labels) / 2
    else:
        per = EST_GEN_ITEM_S + EST_GEN_SHOT_S * shots
    return n * per * EST_BACKEND_FACTOR.get(backend, 1.0)


def _test_count(task: str, dataset: str, root: Path) -> int | None:
    folder = gdata.dataset_dir(task, dataset, root)
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text())["files"]["test"]["count"])
        except (KeyError, ValueError, TypeError, json.JSONDecodeError):
            pass
    path = folder / "test.jsonl"
    if path.is_file():
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return None


def cell_key_material(checkpoint_identity: dict, dtype: str | None, task: str, dataset: str, test_sha: str,
                      demos_sha: str, prompt: int, shots: int, limit: int | None, demo_seed: int | None,
                      harness: str) -> dict:
    """Everything that determines a cell's numbers; its sha256 is the cell key.  Not in it: the backend and
    batch size (genft-hf and hf score identically), the device, the output folder, the suite's name."""
    return {
        "cell_version": CELL_VERSION,
        "checkpoint": checkpoint_identity,
        "dtype": dtype,
        "task": task,
        "dataset": dataset,
        "test_sha256": test_sha,
        "demos_sha256": demos_sha if shots else None,
        "prompt": prompt,
        "shots": shots,
        "limit": limit,
        "demos": "first_n" if demo_seed is None or not shots else {"random": demo_seed},
        "target_delimiter": TARGET_DELIMITER,
        "harness": harness,
    }


def key_of(material: Mapping) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def needed_datasets(suite: Suite) -> list[tuple[str, str]]:
    need = list(suite.eval.test_sets)
    for r in suite.runs:
        pair = (r.values["task"], r.values["dataset"])
        if pair not in need:
            need.append(pair)
    return need


def missing_datasets(suite: Suite) -> list[str]:
    return [f"{t}/{d}" for t, d in needed_datasets(suite)
            if not (gdata.dataset_dir(t, d, suite.data_dir) / "test.jsonl").is_file()]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def plan(suite: Suite | str | os.PathLike, provision: bool = False) -> Plan:
    """Fine-tune jobs, then evaluation cells (checkpoint x test set x prompt x shots x demos), with keys and
    what is already done.  Reads data files (for their hashes); loads no model.  Cells whose key cannot be
    known yet (data missing, a named model not provisioned and provision=False) are planned as to do."""
    from .training import ConfigError, MANIFEST, RUN_FILE, config_hash, load_training_items

    suite = _as_suite(suite)
    root = suite.data_dir
    missing = missing_datasets(suite)
    fp_cache = suite.output / ".fingerprints.json"
    cells_dir = suite.cells_dir

    base_ids: dict[str, tuple[str, dict | None]] = {}

    def base_of(mid: str):
        if mid not in base_ids:
            base_ids[mid] = base_identity(suite.models[mid].model, fp_cache, provision)
        return base_ids[mid]

    # finished cells measured in this suite: refine the time model
    measured: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    tps: list[float] = []

    # ---- fine-tune jobs
    jobs: list[FinetuneJob] = []
    for spec in suite.runs:
        for run, seed in spec.run_names():
            out_dir = suite.checkpoints_dir / run
            cfg = _finetune_config(suite, spec, seed, out_dir)
            chash = None
            if f"{cfg.task}/{cfg.dataset}" not in missing:
                try:
                    _, _, files, _ = load_training_items(cfg)
                except (ConfigError, gdata.DataError) as e:
                    raise SuiteError(f"{suite.path}: finetune[{spec.index}] ({spec.name}): {e}") from None
                chash = config_hash(cfg, files)
            job = FinetuneJob(run=run, spec=spec, seed=seed, config=dataclasses.asdict(cfg), out_dir=out_dir,
                              config_path=suite.output / "configs" / f"{run}.yaml", config_hash=chash)
            man = _read_json(out_dir / MANIFEST)
            started = man or _read_json(out_dir / RUN_FILE)
            if chash and man and man.get("config_hash") == chash:
                job.status = "done"
                t = (man.get("training") or {}).get("tokens_per_s")
                if t:
                    tps.append(float(t))
            elif chash and started and started.get("config_hash") == chash:
                job.status = "resume"
            elif started or (out_dir.exists() and any(out_dir.iterdir())):
                job.status = "retrain"
            job.tokens_est = _estimate_tokens(cfg, root)
            jobs.append(job)
    slowdown = EST_ONE_THREAD if suite.threads == 1 else 1.0  # the default time model is for 2 threads
    train_tps = sum(tps) / len(tps) if tps else EST_TRAIN_TOKENS_S / slowdown
    for job in jobs:
        job.est_s = job.tokens_est / train_tps

    # ---- checkpoints
    checkpoints: list[Checkpoint] = []
    for mid, m in suite.models.items():
        if m.evaluate:
            path, ident = base_of(mid)
            checkpoints.append(Checkpoint(id=mid, kind="base", base=mid, path=path, dtype=m.dtype,
                                          identity=None if ident is None else {"model": ident}))
    for job in jobs:
        _, bident = base_of(job.spec.base)
        ident = None
        if job.config_hash and bident is not None:
            ident = {"finetune_config_hash": job.config_hash, "base": bident}
        checkpoints.append(Checkpoint(id=job.run, kind="finetuned", base=job.spec.base, path=str(job.out_dir),
                                      dtype=suite.models[job.spec.base].dtype, identity=ident, job=job))

    # ---- cells
    ev = suite.eval
    cells: list[Cell] = []
    data_sha: dict[tuple, tuple[str, str] | None] = {}
    for ck in checkpoints:
        for task, ds in ev.test_sets:
            if ck.job is not None and ck.job.spec.test_sets is not None and (task, ds) not in ck.job.spec.test_sets:
                continue
            info = gdata.all_datasets()[ds]
            if (task, ds) not in data_sha:
                folder = gdata.dataset_dir(task, ds, root)
                if f"{task}/{ds}" in missing or not (folder / "demos.jsonl").is_file():
                    data_sha[(task, ds)] = None
                else:
                    data_sha[(task, ds)] = (_sha_file(folder / "test.jsonl"), _sha_file(folder / "demos.jsonl"))
            shas = data_sha[(task, ds)]
            if ck.kind == "base":
                prompts = ev.prompts["base"][task]
            elif task == ck.task:
                prompts = ev.prompts["same_task"][task]
            else:
                prompts = ev.prompts["cross_task"][task]
            limit = ev.limit[task]
            count = _test_count(task, ds, root)
            n_est = min(x for x in (limit, count, 500) if x is not None)
            for prompt in prompts:
                hh = harness_hash(task, ds, prompt)
                for shots in ev.shots[task]:
                    variants: list[int | None] = []
                    if ev.demos in ("fixed", "both") or shots == 0:
                        variants.append(None)
                    if ev.demos in ("random", "both") and shots > 0:
                        variants += list(ev.demo_seeds)
                    for dseed in variants:
                        key = material = None
                        if ck.identity is not None and shas is not None:
                            material = cell_key_material(ck.identity, ck.dtype, task, ds, shas[0], shas[1], prompt,
                                                         shots, limit, dseed, hh)
                            key = key_of(material)
                        est = default_cell_seconds(task, shots, n_est, ev.backend) * slowdown
                        cell = Cell(checkpoint=ck, task=task, dataset=ds, domain=info.domain, prompt=prompt,
                                    shots=shots, limit=limit, demo_seed=dseed, key=key, material=material,
                                    n_est=n_est, est_s=est)
                        if key and (cells_dir / f"{key}.json").is_file():
                            cell.done = True
                            rec = _read_json(cells_dir / f"{key}.json") or {}
                            if isinstance(rec.get("wall_s"), (int, float)):
                                m = measured[cell.kind]
                                m[0] += rec["wall_s"]
                                m[1] += cell.est_s
                        cells.append(cell)
    ratios = {k: (v[0] / v[1] if v[1] > 0 and v[0] > 0 else 1.0) for k, v in measured.items()}
    return Plan(suite=suite, jobs=jobs, checkpoints=checkpoints, cells=cells, missing_data=missing, ratios=ratios,
                train_tps=train_tps)


def fmt_time(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s" if s < 600 else f"{round(s / 60)} min"
    return f"{s // 3600} h {round(s % 3600 / 60):02d} min"


def describe_plan(p: Plan) -> list[str]:
    s = p.suite
    lines = [f"suite {s.name} ({s.path}): output {s.output}"]
    done_jobs = sum(j.status == "done" for j in p.jobs)
    lines.append(f"  fine-tunes: {len(p.jobs)} ({done_jobs} done, {len(p.jobs) - done_jobs} to run)")
    for j in p.jobs:
        c = j.config
        what = (f"{c['task']}/{c['dataset']} train_{c['train_size']}"
                f"{'' if c['train_limit'] is None else ' first ' + str(c['train_limit'])} {j.spec.method}"
                f"{' icl ' + str(c['icl_shots']) + ' ' + c['icl_demos'] if c['icl_shots'] else ''} seed {j.seed}")
        est = "" if j.status == "done" else f", ~{j.tokens_est // 1000}k tokens, ~{fmt_time(j.est_s)}"
        lines.append(f"    {j.run}: {what} [{j.status}{est}]")
    todo = p.todo_cells
    lines.append(f"  cells: {len(p.cells)} ({len(p.cells) - len(todo)} done, {len(todo)} to run) over "
                 f"{len(p.checkpoints)} checkpoints")
    for ck in p.checkpoints:
        cs = [c for c in p.cells if c.checkpoint is ck]
        left = [c for c in cs if not c.done]
        t = sum(c.est_s * p.ratios.get(c.kind, 1.0) for c in left)
        lines.append(f"    {ck.id} ({ck.kind}{', ' + ck.task if ck.task else ''}): {len(cs)} cells, {len(left)} to run"
                     + (f", ~{fmt_time(t + EST_LOAD_S)}" if left else ""))
    if p.missing_data:
        how = "`genft data builtin`" if s.source == "builtin" else (
            f"import from {s.study_src}" if s.study_src else "`genft data import-study ../shared/paper-data`")
        lines.append(f"  data missing in {s.data_dir}: {', '.join(p.missing_data)} (run: {how})")
    unknown = sum(1 for c in p.cells if c.key is None)
    if unknown:
        lines.append(f"  {unknown} cell keys are not known yet (data or model not provisioned): counted as to run")
    est = p.estimate()
    n_measured = sum(1 for c in p.cells if c.done)
    basis = (f"refined by {n_measured} finished cells (x{', x'.join(f'{v:.2f} {k}' for k, v in sorted(p.ratios.items()))})"
             if p.ratios else "default time model: SmolLM2-135M on 2 CPU cores")
    other = sorted({m.model for m in s.models.values()} - {"smollm2-135m", "tiny"})
    if other and not p.ratios:
        basis += f"; NOT calibrated for {', '.join(other)} or a GPU: the estimate follows measured times once cells finish"
    lines.append(f"  estimated time left: ~{fmt_time(est['total'])} (fine-tunes ~{fmt_time(est['finetune'])}, "
                 f"evaluation ~{fmt_time(est['eval'])}; backend {s.eval.backend}; {basis}; training at "
                 f"{p.train_tps:.0f} tokens/s)")
    return lines


def plan_json(p: Plan) -> dict:
    return {
        "suite": p.suite.name,
        "file": str(p.suite.path),
        "time": _now(),
        "output": str(p.suite.output),
        "jobs": [{"run": j.run, "name": j.spec.name, "seed": j.seed, "status": j.status, "config_hash": j.config_hash,
                  "config": str(j.config_path), "checkpoint": str(j.out_dir), "tokens_est": j.tokens_est,
                  "est_s": round(j.est_s, 1)} for j in p.jobs],
        "cells": [{"key": c.key, "model": c.checkpoint.id, "task": c.task, "dataset": c.dataset, "prompt": c.prompt,
                   "shots": c.shots, "limit": c.limit, "demo_seed": c.demo_seed, "done": c.done,
                   "est_s": round(c.est_s, 1)} for c in p.cells],
        "estimate_s": {k: round(v, 1) for k, v in p.estimate().items()},
    }


# ====================================================================== the seams: trainer and executor


class Trainer:
    """Runs one fine-tuning job so that job.out_dir ends up holding the model and genft_manifest.json."""

    def train(self, job: FinetuneJob, log: Callable[[str], None]) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def _die_with_parent() -> None:
    """In the trainer's child process: end it when the suite process dies (even by kill -9), so that no
    orphaned trainer keeps writing into a checkpoint folder that the next suite run resumes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001  (best effort: not Linux / no glibc)
        pass


class SubprocessTrainer(Trainer):
    """The real trainer: `python finetune/sft.py --config <output>/configs/<run>.yaml`, output streamed."""

    def __init__(self, script: Path = SFT_SCRIPT, python: str = sys.executable):
        self.script = Path(script)
        self.python = python

    def train(self, job: FinetuneJob, log: Callable[[str], None]) -> None:
        if not self.script.is_file():
            raise SuiteError(f"{self.script}: the fine-tuning script is missing")
        env = dict(os.environ)
        threads = job.config.get("torch_threads")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [self.python, str(self.script), "--config", str(job.config_path)]
        log(f"  $ {' '.join(cmd)}")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                                cwd=str(REPO), preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n").split("\r")[-1]
                if not line.strip() or "%|" in line:  # blank lines and progress bars
                    continue
                tail = (tail + [line])[-20:]
                log(f"  | {line}")
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        if rc != 0:
            raise RuntimeError(f"fine-tune {job.run} failed (exit {rc}): {' / '.join(tail[-3:])}; "
                               f"re-run the suite to resume, or run `{' '.join(cmd)}` to see the error")


@dataclass
class EvalContext:
    suite: Suite
    log: Callable[[str], None]
    progress: "Progress"
    backend: str
    device: str


@dataclass
class CheckpointWork:
    checkpoint: Checkpoint
    cells: list[Cell]


class Executor:
    """Evaluates units of work (one checkpoint and its missing cells).  A distributed engine can implement
    this by shipping each CheckpointWork to a worker that calls `evaluate_checkpoint`."""

    def run(self, works: Sequence[CheckpointWork], ctx: EvalContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class LocalExecutor(Executor):
    """In this process, in order: one model load per checkpoint."""

    def run(self, works: Sequence[CheckpointWork], ctx: EvalContext) -> None:
        for work in works:
            evaluate_checkpoint(work, ctx)


class Progress:
    def __init__(self, cells: Sequence[Cell], ratios: Mapping[str, float], log: Callable[[str], None]):
        self.total = len(cells)
        self.done = 0
        self.left = {id(c): c for c in cells}
        self.ratios = dict(ratios)
        self.measured: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.loads_left = len({c.checkpoint.id for c in cells})
        self.log = log

    def loaded(self) -> None:
        self.loads_left = max(0, self.loads_left - 1)

    def finished(self, cell: Cell, wall: float, metric: str, value: float | None) -> None:
        self.done += 1
        self.left.pop(id(cell), None)
        m = self.measured[cell.kind]
        m[0] += wall
        m[1] += cell.est_s
        if m[1] > 0 and m[0] > 0:
            self.ratios[cell.kind] = m[0] / m[1]
        rest = sum(c.est_s * self.ratios.get(c.kind, 1.0) for c in self.left.values()) + EST_LOAD_S * self.loads_left
        val = "n/a" if value is None else f"{value:.3f}"
        self.log(f"[{self.done}/{self.total}] {cell.label()}: {metric} {val} ({wall:.0f} s)"
                 + (f", ~{fmt_time(rest)} left" if self.left else ""))


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _backend(name: str, log) -> str:
    if name == "genft-hf":
        try:
            from . import backend  # noqa: F401
        except ModuleNotFoundError as e:
            if e.name != "genft.backend":
                raise
            log("warning: backend genft-hf is not available (genft.backend missing): using hf (identical scores)")
            return "hf"
    return name


def primary_metric(task: str) -> str:
    return "acc_first" if get_task(task).is_classification else "rougeL"


def _random_demo_task(tm, name: str):
    """The task with lm-eval's seeded random sampler instead of the study's first-k (demo_seed cells)."""
    try:
        return tm._factory.build(tm._entry(name), overrides={"fewshot_config": {"sampler": "default"}},
                                 registry=tm._index)
    except AttributeError as e:  # lm-eval's private TaskManager API moved
        raise SuiteError(f"random demonstrations need lm-eval 0.4.13's TaskManager internals ({e}); use demos: fixed")


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("genft", "lm_eval", "torch", "transformers"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    return out


_VERSIONS: dict | None = None


def cell_record(cell: Cell, suite: Suite, result: Mapping, samples: list[dict], wall: float, ctx: EvalContext,
                shared: int) -> dict:
    """THE record the report reads (exactly these top-level keys)."""
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = _versions()
    ck = cell.checkpoint
    samples = sorted(samples, key=lambda s: s["doc_id"])
    metrics = {}
    for k, v in result.items():
        if "," not in k or "_stderr" in k:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[k.split(",", 1)[0]] = v
    names: list[str] = []
    for s in samples:
        for m in s.get("metrics") or []:
            if m not in names:
                names.append(m)
    items = {m: [s.get(m) for s in samples] for m in names}
    majority = None
    spec = get_task(cell.task)
    if spec.is_classification and samples:
        counts = defaultdict(int)
        for s in samples:
            gold = next((lab for lab in spec.labels if s.get(f"gold_{lab}")), None)
            if gold is None:
                doc = s.get("doc") or {}
                gold = doc.get(spec.target)
            counts[gold] += 1
        majority = max(counts.values()) / len(samples)
    ft = None
    if ck.job is not None:
        c = ck.job.config
        man = _read_json(ck.job.out_dir / "genft_manifest.json") or {}
        wd = man.get("weight_deviation")
        if isinstance(wd, Mapping):
            wd = wd.get("mean_abs_diff")
        ft = {"run": ck.job.run, "task": c["task"], "dataset": c["dataset"], "train_size": c["train_size"],
              "train_limit": c["train_limit"], "method": ck.job.spec.method, "icl_shots": c["icl_shots"],
              "icl_demos": c["icl_demos"] if c["icl_shots"] else None, "seed": ck.job.seed, "weight_deviation": wd}
    assert cell.material is not None
    return {
        "key": cell.key,
        "suite": suite.name,
        "model": ck.id,
        "checkpoint": ck.path,
        "base": ck.base,
        "finetune": ft,
        "task": cell.task,
        "dataset": cell.dataset,
        "domain": cell.domain,
        "prompt": cell.prompt,
        "shots": cell.shots,
        "limit": cell.limit,
        "demo_seed": cell.demo_seed,
        "n": len(samples),
        "metrics": metrics,
        "items": items,
        "majority_rate": majority,
        "wall_s": round(wall, 3),
        "provenance": {
            **_VERSIONS,
            "backend": ctx.backend,
            "batch_size": suite.eval.batch_size,
            "data_sha256": cell.material["test_sha256"],
            "demos_sha256": cell.material["demos_sha256"],
            "harness_hash": cell.material["harness"],
            "target_delimiter": TARGET_DELIMITER,
            "dtype": ck.dtype,
            "device": ctx.device,
            "hostname": socket.gethostname(),
            "time": _now(),
            "wall_s_shared_by": shared,  # cells evaluated in the same lm-eval call (wall_s apportioned)
            "key_material": cell.material,
        },
    }


def _cost_weight(samples: list[dict], generation: bool) -> float:
    w = 0.0
    for s in samples:
        args = s.get("arguments") or []
        for a in args:
            ctx = a[0] if isinstance(a, (list, tuple)) and a else ""
            w += len(ctx) if isinstance(ctx, str) else 0
        if generation:
            w += 60 * 4 * 8  # 60 generated tokens cost about as much as a long context
    return w or 1.0


def write_cell(suite: Suite, record: dict, samples: list[dict]) -> Path:
    """Samples first, then the record: the record's presence means the cell is complete."""
    key = record["key"]
    d = suite.cells_dir
    lines = "".join(json.dumps(s, default=str, ensure_ascii=False) + "\n" for s in sorted(samples, key=lambda s: s["doc_id"]))
    _write_atomic(d / f"{key}.samples.jsonl", lines.encode("utf-8"))
    path = d / f"{key}.json"
    _write_json(path, record)
    return path


def evaluate_checkpoint(work: CheckpointWork, ctx: EvalContext) -> None:
    """ONE model load for all the checkpoint's missing cells; one lm-eval call per (shots, demos, limit) group
    (eval.group: shots) or per cell (eval.group: cell); each finished cell is written at once."""
    from . import harness

    suite, ck = ctx.suite, work.checkpoint
    ev = suite.eval
    ctx.log(f"loading {ck.id} ({ck.path}) with {ctx.backend} on {ctx.device}")
    t0 = time.time()
    lm = harness.load_model(ck.path, ctx.backend, batch_size=ev.batch_size, device=ctx.device,
                            dtype=None if ck.dtype in (None, "auto") else ck.dtype)
    ctx.progress.loaded()
    ctx.log(f"loaded {ck.id} in {time.time() - t0:.0f} s")
    tm = harness.task_manager(ck.path, suite.data_dir)
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for i, c in enumerate(work.cells):
        gk = (c.shots, c.demo_seed, c.limit) if ev.group == "shots" else (c.shots, c.demo_seed, c.limit, i)
        groups[gk].append(c)
    for gk, cells in groups.items():
        shots, dseed, limit = gk[:3]
        specs = [_random_demo_task(tm, c.task_name) if dseed is not None else c.task_name for c in cells]
        t1 = time.time()
        res = harness.evaluate(lm, specs, num_fewshot=shots, limit=limit, pretrained=ck.path, data_root=suite.data_dir,
                               log_samples=True, fewshot_random_seed=1234 if dseed is None else dseed, tm=tm)
        wall = time.time() - t1
        weights = {c.task_name: _cost_weight(res["samples"][c.task_name], c.kind == "generation") for c in cells}
        total_w = sum(weights.values())
        for c in cells:
            samples = res["samples"][c.task_name]
            cwall = wall * weights[c.task_name] / total_w
            rec = cell_record(c, suite, res["results"][c.task_name], samples, cwall, ctx, len(cells))
            write_cell(suite, rec, samples)
            c.done = True
            metric = primary_metric(c.task)
            ctx.progress.finished(c, cwall, metric, rec["metrics"].get(metric))
    del lm


# ====================================================================== running


class _Lock:
    """One suite run per output folder at a time (flock; released by the OS even after kill -9)."""

    def __init__(self, output: Path):
        self.path = output / ".suite.lock"
        self.f = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            other = self.f.read().strip()
            self.f.close()
            raise SuiteError(f"{self.path.parent}: another `genft suite run` is using this output folder ({other}); "
                             "wait for it or give this suite another output") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _clean_temp(suite: Suite) -> int:
    """Remove temporary files left by a killed run (under the lock, so no writer is active)."""
    n = 0
    for d in (suite.cells_dir, suite.output / "configs", suite.output):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def ensure_data(suite: Suite, log: Callable[[str], None]) -> None:
    missing = missing_datasets(suite)
    if not missing:
        return
    if suite.source == "builtin":
        from .builtin import generate

        log(f"data: writing genft's builtin data into {suite.data_dir} (missing: {', '.join(missing)})")
        generate(suite.data_dir, log=lambda *_: None)
    elif suite.study_src is not None:
        log(f"data: importing the study's release from {suite.study_src} into {suite.data_dir}")
        gdata.import_study(suite.study_src, suite.data_dir, log=lambda *_: None)
    else:
        raise SuiteError(f"{suite.path}: data sets missing in {suite.data_dir}: {', '.join(missing)}; run "
                         f"`genft data import-study ../shared/paper-data --data-dir {suite.data_dir}` or set "
                         "data.study_src in the suite")
    still = missing_datasets(suite)
    if still:
        raise SuiteError(f"{suite.path}: data sets still missing in {suite.data_dir}: {', '.join(still)}")


def _write_config(job: FinetuneJob) -> None:
    import yaml

    from .training import FIELDS

    cfg = {k: job.config[k] for k in FIELDS if k in job.config}
    header = (f"# Written by `genft suite run` for run {job.run}; the suite file is the source of truth.\n"
              f"# config hash {job.config_hash}\n")
    _write_atomic(job.config_path, (header + yaml.safe_dump(cfg, sort_keys=False)).encode("utf-8"))


def run_finetunes(p: Plan, trainer: Trainer, log: Callable[[str], None]) -> list[str]:
    """Train what is missing; returns the runs that failed (their cells are skipped)."""
    from .training import MANIFEST

    failed = []
    todo = p.todo_jobs
    for i, job in enumerate(todo, 1):
        if job.status == "retrain":
            log(f"fine-tune {job.run}: {job.out_dir} holds a run with another config or data: removing it, retraining")
            trash = job.out_dir.with_name(f".{job.run}.old")
            shutil.rmtree(trash, ignore_errors=True)
            job.out_dir.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        _write_config(job)
        log(f"fine-tune [{i}/{len(todo)}] {job.run} ({'resuming' if job.status == 'resume' else 'new'}; "
            f"~{fmt_time(job.est_s)})")
        t0 = time.time()
        try:
            trainer.train(job, log)
        except (RuntimeError, OSError) as e:
            log(f"fine-tune {job.run} FAILED: {e}")
            failed.append(job.run)
            continue
        man = _read_json(job.out_dir / MANIFEST)
        if not man:
            log(f"fine-tune {job.run} FAILED: the trainer exited without writing {job.out_dir / MANIFEST}")
            failed.append(job.run)
            continue
        if man.get("config_hash") != job.config_hash:
            log(f"fine-tune {job.run} FAILED: its manifest's config hash {str(man.get('config_hash'))[:12]} differs "
                f"from the suite's {str(job.config_hash)[:12]} (the suite and finetune/sft.py disagree on the config)")
            failed.append(job.run)
            continue
        job.status = "done"
        log(f"fine-tune {job.run} done in {fmt_time(time.time() - t0)}")
    return failed


def _report(suite_path: Path, log) -> None:
    try:
        from . import report
    except ModuleNotFoundError as e:
        if e.name != "genft.report":
            raise
        log("report: genft.report is not available yet; skipped")
        return
    md = report.write_report(suite_path)
    log(f"report: {md}")


def run_suite(path: str | os.PathLike, dry_run: bool = False, executor: Executor | None = None,
              trainer: Trainer | None = None, log: Callable[[str], None] = print, report: bool = True) -> int:
    """Validate, plan, print the plan; unless dry_run: fine-tune, evaluate and write the report.
    Returns 0 when every cell is finished, 1 when something failed (finished cells are kept)."""
    suite = load_suite(path)
    if dry_run:
        p = plan(suite)
        for line in describe_plan(p):
            log(line)
        log("dry run: nothing was done")
        return 0
    with _Lock(suite.output):
        n = _clean_temp(suite)
        if n:
            log(f"removed {n} temporary files left by an interrupted run")
        if suite.threads:
            os.environ["OMP_NUM_THREADS"] = str(suite.threads)
            try:
                import torch

                torch.set_num_threads(suite.threads)
            except ImportError:
                pass
        ensure_data(suite, log)
        p = plan(suite, provision=True)
        for line in describe_plan(p):
            log(line)
        _write_json(suite.output / "plan.json", plan_json(p))
        failed: list[str] = []
        if p.todo_jobs:
            failed = run_finetunes(p, trainer or SubprocessTrainer(), log)
        todo = [c for c in p.todo_cells if c.checkpoint.id not in failed]
        if todo:
            if any(c.key is None for c in todo):
                raise SuiteError(f"{suite.path}: some cell keys are unknown after provisioning (data or model missing)")
            import logging

            for name in ("lm_eval.api.task", "lm_eval.evaluator"):  # per-cell noise ("Overwriting num_fewshot")
                logging.getLogger(name).setLevel(logging.ERROR)
            backend = _backend(suite.eval.backend, log)
            ctx = EvalContext(suite=suite, log=log, progress=Progress(todo, p.ratios, log), backend=backend,
                              device=_device(suite.eval.device))
            works: dict[str, CheckpointWork] = {}
            for c in todo:
                works.setdefault(c.checkpoint.id, CheckpointWork(c.checkpoint, [])).cells.append(c)
            (executor or LocalExecutor()).run(list(works.values()), ctx)
        else:
            log("every cell is finished: nothing to evaluate")
        _write_json(suite.output / "plan.json", plan_json(p))
        if report:
            _report(suite.path, log)
        if failed:
            log(f"FAILED fine-tunes: {', '.join(failed)}; their cells were skipped; re-run the suite to retry")
            return 1
    return 0


# ====================================================================== for the report writer


def _output_of(suite: Suite | str | os.PathLike) -> tuple[Path, str | None]:
    if isinstance(suite, Suite):
        return suite.output, suite.name
    p = Path(suite)
    if p.is_file():
        s = load_suite(p)
        return s.output, s.name
    if p.is_dir():
        return p.resolve(), None
    return Path("runs") / str(suite), str(suite)  # a suite name: its default output


def load_cells(suite: Suite | str | os.PathLike, current: bool = True) -> list[dict]:
    """The finished cell records of a suite (a suite file, a Suite, an output folder or a suite name).
    current=True: only the cells of the last plan (plan.json), so that cells of changed settings drop out."""
    out, _ = _output_of(suite)
    d = out / "cells"
    if not d.is_dir():
        return []
    keys = None
    if current:
        pj = _read_json(out / "plan.json")
        if pj is not None:
            keys = [c["key"] for c in pj.get("cells", []) if c.get("key")]
    paths = [d / f"{k}.json" for k in keys] if keys is not None else sorted(d.glob("*.json"))
    cells = []
    for path in paths:
        rec = _read_json(path) if path.is_file() else None
        if rec is not None:
            cells.append(rec)
    return cells


def load_manifests(suite: Suite | str | os.PathLike) -> dict[str, dict]:
    """run name -> the fine-tuning manifest (genft_manifest.json) of each finished checkpoint."""
    out, _ = _output_of(suite)
    result = {}
    d = out / "checkpoints"
    if d.is_dir():
        for folder in sorted(d.iterdir()):
            man = _read_json(folder / "genft_manifest.json") if folder.is_dir() else None
            if man is not None:
                result[folder.name] = man
    return result
