"""Planning: a pure function from a suite, what was read about its data and models (`PlanInputs`, read by
`observe`) and a snapshot of its store (`snapshot.read`) to a frozen plan of fine-tune jobs and evaluation
cells, each cell keyed by everything that determines its numbers.  It imports no torch, loads, prepares and
reads nothing: the same inputs and snapshot give the same plan.

Identities (what a key is built from):
* a base model: the fingerprint of its folder's weights, config and tokenizer (`models.weights_fingerprint`),
  or a hub id with its cached revision;
* a fine-tuned checkpoint: its base's identity, its recipe hash (every setting that changes the weights and
  the training data's sha256s; `training.config_hash`) and the fingerprint of the trained weights from its
  manifest, so a retrained checkpoint never reuses cells scored on other weights.  Its cells' keys are known
  once it is trained;
* a cell: the checkpoint's identity, the evaluation device kind, the effective dtype, the backend, the test
  and demonstration files' sha256s, prompt, shots, limit, demonstration choice and the harness files' hash;
  a staged cell (eval.stages) adds the seed and step of its items' order.  Not in it: the batch size, the
  output paths and the stop rule (a cell that stopped says why; changing the rule continues it).

A `Cell` is plan data only; what the store holds of it is its `CellStatus` (judged from the snapshot), and a
plan lists each cell joined with its status (`CellState`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .. import data as gdata
from ..files import fmt_duration
from ..harness_names import task_name
from ..models import hub_cache
from ..prompts import TARGET_DELIMITER, get_task
from ..training import FinetuneConfig, Manifest, config_from_mapping, validate
from ..training.steps import step_dir
from . import estimate, stages, store
from .schema import SuiteError
from .snapshot import Snapshot, judge
from .spec import Suite, TestSet


# ---------------------------------------------------------------- what the planner is given


@dataclass(frozen=True)
class TestSetFacts:
    shas: tuple[str, str] | None  # (test.jsonl, demos.jsonl) sha256s; None: the data set is missing
    count: int | None  # items in the test set; None: not there


@dataclass(frozen=True)
class RunFacts:
    """One fine-tuning run's config, training data hashes and output folder, as read."""

    config: FinetuneConfig
    recipe_hash: str | None  # None while the training data is missing
    replicate_hash: str | None
    manifest: Manifest | None  # the folder's finished-run manifest
    started: str | None  # the config hash of the run there: the manifest's, else a started run's run file's
    occupied: bool  # the folder exists and holds files
    foreign: tuple[str, ...]  # files in it genft did not write
    tokens_est: int


@dataclass(frozen=True)
class ModelFacts:
    path: str  # what the backend loads (a folder or a hub id)
    identity: dict | None  # None: not provisioned
    dtype: str | None  # the effective evaluation dtype; None: not known (no local config)


@dataclass(frozen=True)
class PlanInputs:
    """Everything the planner reads about the world, read at its edge (`observe.observe`)."""

    device: str  # what the backend is given (cpu, cuda, cuda:N, mps)
    device_id: str  # the device part of a cell key
    missing: tuple[str, ...]  # data sets missing: task/dataset
    test_sets: Mapping[TestSet, TestSetFacts]
    harness: Mapping[tuple[str, str, int], str]  # (task, dataset, prompt) -> harness files' hash (data there)
    study_tokens: str | None  # the study-token modules' hash (study protocol)
    bases: Mapping[str, ModelFacts]  # by model id
    runs: Mapping[str, RunFacts]  # by checkpoint name
    dtypes: Mapping[str, str | None] = field(default_factory=dict)  # effective dtype of each fine-tuned folder


# ---------------------------------------------------------------- what it plans


@dataclass(frozen=True)
class FinetuneJob:
    run: str  # checkpoint name (the run's name, + -seed<s> with explicit seeds)
    name: str  # the run's name in the suite file
    index: int
    seed: int
    method: str
    config: dict  # the validated sft.py config
    out_dir: Path
    config_path: Path
    recipe_hash: str | None  # training.config_hash; None while the training data is missing
    replicate_hash: str | None  # the same without the seed
    status: str  # done | resume | todo | retrain
    manifest: Manifest | None  # the finished run's manifest (status done)
    tokens_est: int
    est_s: float


@dataclass(frozen=True)
class Checkpoint:
    id: str  # a run name or a base model id
    kind: str  # base | finetuned
    base: str  # base model id
    path: str  # what the backend loads (a folder or a hub id)
    dtype: str | None  # the effective evaluation dtype; None: not known yet
    identity: dict | None  # None: not known yet (model not provisioned, data missing, not trained)
    job: FinetuneJob | None = None

    @property
    def task(self) -> str | None:
        return self.job.config["task"] if self.job else None


@dataclass(frozen=True)
class Cell:
    """One evaluation the suite asks for: plan data only (what the store holds of it is its CellStatus)."""

    checkpoint: Checkpoint
    task: str
    dataset: str
    domain: str
    prompt: int
    shots: int
    limit: int | None
    demo_seed: int | None
    n: int | None  # the items the cell scores; None while the data is missing
    key: str | None
    material: dict | None
    stages: tuple[int, int] | None = None  # staged evaluation: (seed, step) of the items' order
    count: int | None = None  # items in the test set (the order's length)

    @property
    def staged(self) -> bool:
        return self.stages is not None

    @property
    def task_name(self) -> str:
        return task_name(self.task, self.dataset, self.prompt)

    @property
    def family(self) -> str:
        return get_task(self.task).family

    @property
    def metric(self) -> str:
        return get_task(self.task).primary_metric

    def unknown_key_reason(self) -> str | None:
        """Why the cell's key is not known yet (None when it is)."""
        ck = self.checkpoint
        if self.key is not None:
            return None
        if ck.identity is None:
            return (f"checkpoint {ck.id} is not trained yet" if ck.kind == "finetuned"
                    else f"model {ck.path} is not provisioned")
        if ck.dtype is None:
            return (f"model {ck.path} has no local config.json to take its dtype from (a hub id not in the local "
                    f"hub cache {hub_cache()}): download it, or set the model's dtype: in the suite")
        return f"data set {self.task}/{self.dataset} is missing (test.jsonl or demos.jsonl)"


@dataclass(frozen=True)
class CellStatus:
    """What the store snapshot holds of a cell."""

    done: bool = False
    problem: str | None = None  # a file is there but cannot count (named, re-run)
    wall_s: float | None = None  # measured, when it holds items
    held: int = 0  # items its stored record holds (staged cells grow stage by stage)
    stopped: str | None = None  # a staged record's stop reason (decided / exhausted / limit)


@dataclass(frozen=True)
class CellState:
    """A planned cell joined with its status; reads the cell's fields through (`state.key`, `state.task`)."""

    cell: Cell
    status: CellStatus
    est_s: float  # the time it is expected to take: its items left (done: the items it holds)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("cell", "status", "est_s"):
            raise AttributeError(name)
        return getattr(self.cell, name)

    done = property(lambda self: self.status.done)
    problem = property(lambda self: self.status.problem)
    wall_s = property(lambda self: self.status.wall_s)
    held = property(lambda self: self.status.held)
    stopped = property(lambda self: self.status.stopped)

    @property
    def stage(self) -> int:
        """Stages evaluated (0: none yet; unstaged cells: 0)."""
        return stages.stage_of(self.held, self.cell.stages[1]) if self.cell.stages else 0

    def label(self, stage: bool = True) -> str:
        """What a person reads; `stage`: name the stage it runs next (staged cells still running)."""
        c = self.cell
        demos = "" if c.demo_seed is None else f" random demos seed {c.demo_seed}"
        stage = f" stage {self.stage + 1}" if stage and c.staged and not self.done else ""
        return f"{c.task_name} {c.shots}-shot{demos} on {c.checkpoint.id}{stage}"


@dataclass(frozen=True)
class Plan:
    suite: Suite
    device: str  # what the backend is given (cpu, cuda, cuda:N, mps)
    jobs: tuple[FinetuneJob, ...]
    checkpoints: tuple[Checkpoint, ...]
    cells: tuple[CellState, ...]  # each planned Cell with its CellStatus
    missing_data: tuple[str, ...]
    ratios: dict  # measured / default time per task family
    train_tps: float

    @property
    def todo_cells(self) -> list[CellState]:
        return [c for c in self.cells if not c.done]

    @property
    def todo_jobs(self) -> list[FinetuneJob]:
        return [j for j in self.jobs if j.status != "done"]

    @property
    def problems(self) -> list[str]:
        return [c.problem for c in self.cells if c.problem]

    def estimate(self) -> dict[str, float]:
        cells = sum(c.est_s * self.ratios.get(c.family, 1.0) for c in self.todo_cells)
        loads = estimate.LOAD_S * len({c.checkpoint.id for c in self.todo_cells})
        train = sum(j.est_s for j in self.todo_jobs)
        return {"finetune": train, "eval": cells + loads, "total": train + cells + loads}


# ---------------------------------------------------------------- keys


def cell_key_material(checkpoint: Checkpoint, device: str, backend: str, protocol: str, task: str, dataset: str,
                      test_sha: str, demos_sha: str, prompt: int, shots: int, limit: int | None,
                      demo_seed: int | None, harness: str, stages: tuple[int, int] | None = None,
                      study_tokens: str | None = None) -> dict:
    """Everything that determines a cell's numbers; its sha256 is the cell key.  `harness`: the hash of the
    files that render and score its prompts; `stages`: (seed, step) of a staged cell's item order (unstaged
    cells' keys do not have the entry); `study_tokens`: study-protocol cells' token modules' hash."""
    staged = {} if stages is None else {"stages": {"seed": stages[0], "step": stages[1]}}
    material = {
        "cell_version": store.KEY_VERSION,
        "protocol": protocol,
        "checkpoint": checkpoint.identity,
        "dtype": checkpoint.dtype,
        "device": device,
        "backend": backend,
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
        **staged,
    }
    if protocol == "study":
        material["study_tokens"] = study_tokens
    return material


def needed_datasets(suite: Suite) -> list[TestSet]:
    """The data sets a suite reads: its test sets, then its runs' training sets."""
    need = list(suite.eval.test_sets)
    for r in suite.runs:
        pair = (r.values["task"], r.values["dataset"])
        if pair not in need:
            need.append(pair)
    return need


def finetune_config(suite: Suite, spec, seed: int, out_dir: Path) -> FinetuneConfig:
    values = dict(spec.values)
    values.update(model_name_or_path=suite.models[spec.base].model, output_dir=str(out_dir),
                  data_dir=str(suite.data_dir), seed=seed)
    if suite.threads and values.get("torch_threads") is None:
        values["torch_threads"] = suite.threads
    if values.get("report_to") and values.get("run_name") is None:  # the tracker's name for the run
        values["run_name"] = f"{suite.name}/{out_dir.name}"
    return validate(config_from_mapping(values, str(suite.path)))


# ---------------------------------------------------------------- the plan


def plan(suite: Suite, inputs: PlanInputs, snapshot: Snapshot) -> Plan:
    """Fine-tune jobs, then evaluation cells (checkpoint x test set x prompt x shots x demos) with keys, each
    joined with what the snapshot holds of it.  Cells whose key cannot be known yet (data missing, a model not
    provisioned, a checkpoint not trained) are planned as to do."""
    tps: dict[bool, list[float]] = {}  # measured tokens/s of finished runs, by bf16 mixed precision
    jobs = [_job(suite, spec, run, seed, inputs.runs[run], tps) for spec in suite.runs
            for run, seed in spec.run_names()]
    rates = {bf16: estimate.train_rate(tps.get(bf16, []), suite.threads, bf16) for bf16 in (False, True)}
    jobs = [dataclasses.replace(j, est_s=j.tokens_est / rates[bool(j.config.get("bf16"))]) for j in jobs]
    checkpoints = _checkpoints(suite, inputs, jobs)
    cells = [_state(suite, cell, snapshot) for ck in checkpoints for cell in _cells(suite, inputs, ck)]
    ratios = estimate.calibrate((c.family, c.wall_s, c.est_s) for c in cells if c.done and c.wall_s)
    return Plan(suite=suite, device=inputs.device, jobs=tuple(jobs), checkpoints=tuple(checkpoints),
                cells=tuple(cells), missing_data=inputs.missing, ratios=ratios, train_tps=rates[False])


def _job(suite: Suite, spec, run: str, seed: int, facts: RunFacts, tps: dict[bool, list[float]]) -> FinetuneJob:
    out_dir = suite.checkpoints_dir / run
    chash, man, started = facts.recipe_hash, facts.manifest, facts.started
    status = "todo"
    if chash and man and man.config_hash == chash and man.missing_steps(facts.config.step_models):
        status = "retrain"  # finished without a step model now asked for: trained again
    elif chash and man and man.config_hash == chash:
        status = "done"
        if man.training.tokens_per_s:
            tps.setdefault(man.device.bf16, []).append(man.training.tokens_per_s)
    elif chash and started == chash:
        status = "resume"
    elif started or facts.occupied:
        if facts.foreign:  # never cleared: what genft did not write stays, and the run waits for the folder
            other = "a run of another config and " if started else ""
            raise SuiteError(
                f"{suite.path}: finetune[{spec.index}] ({spec.name}): {out_dir} holds {other}files genft did not write "
                f"({', '.join(facts.foreign[:5])}{', ...' if len(facts.foreign) > 5 else ''}); genft never deletes "
                f"them: move them out of {out_dir} (or delete the folder yourself), then re-run")
        status = "retrain"
    return FinetuneJob(run=run, name=spec.name, index=spec.index, seed=seed, method=spec.method,
                       config=dataclasses.asdict(facts.config), out_dir=out_dir,
                       config_path=suite.output / "configs" / f"{run}.yaml", recipe_hash=chash,
                       replicate_hash=facts.replicate_hash, status=status, manifest=man if status == "done" else None,
                       tokens_est=facts.tokens_est, est_s=0.0)


def _checkpoints(suite: Suite, inputs: PlanInputs, jobs: list[FinetuneJob]) -> list[Checkpoint]:
    """The base models evaluated, then each fine-tuned model and its intermediate (step) models."""
    out = [Checkpoint(id=mid, kind="base", base=mid, path=inputs.bases[mid].path, dtype=inputs.bases[mid].dtype,
                      identity=None if inputs.bases[mid].identity is None else {"model": inputs.bases[mid].identity})
           for mid, m in suite.models.items() if m.evaluate]
    runs = {r.index: r for r in suite.runs}
    for job in jobs:
        base_id = runs[job.index].base
        bident = inputs.bases[base_id].identity
        ident = None
        if job.manifest is not None and bident is not None:
            ident = {"base": bident, "recipe_hash": job.recipe_hash, "weights": job.manifest.weights_sha256}
        out.append(Checkpoint(id=job.run, kind="finetuned", base=base_id, path=str(job.out_dir),
                              dtype=inputs.dtypes.get(str(job.out_dir)), identity=ident, job=job))
        for step in job.config.get("step_models") or []:  # intermediate models: checkpoints of their own
            folder = step_dir(job.out_dir, step)
            saved = job.manifest.steps.get(str(step)) if job.manifest else None
            out.append(Checkpoint(
                id=f"{job.run}@step{step}", kind="finetuned", base=base_id, path=str(folder),
                dtype=inputs.dtypes.get(str(folder)), job=job,
                identity=None if ident is None or not saved else {**ident, "weights": saved.weights_sha256,
                                                                  "step": step}))
    return out


def _cells(suite: Suite, inputs: PlanInputs, ck: Checkpoint) -> list[Cell]:
    """A checkpoint's cells: its test sets x prompts x shots x demonstration choices."""
    ev = suite.eval
    own = next(r.test_sets for r in suite.runs if r.index == ck.job.index) if ck.job else None
    out = []
    for task, ds in ev.test_sets:
        if own is not None and (task, ds) not in own:
            continue
        facts = inputs.test_sets[(task, ds)]
        which = "base" if ck.kind == "base" else ("same_task" if task == ck.task else "cross_task")
        limit = ev.limit_of(task, ds)
        n = None if facts.count is None else min(facts.count, limit) if limit else facts.count
        for prompt in ev.prompts[which][task]:
            for shots in ev.shots[task]:
                seeds: list[int | None] = []
                if ev.demos in ("fixed", "both") or shots == 0:
                    seeds.append(None)
                if ev.demos in ("random", "both") and shots > 0:
                    seeds += list(ev.demo_seeds)
                out += [_cell(suite, inputs, ck, task, ds, prompt, shots, limit, dseed, n, facts) for dseed in seeds]
    return out


def _cell(suite: Suite, inputs: PlanInputs, ck: Checkpoint, task: str, ds: str, prompt: int, shots: int,
          limit: int | None, dseed: int | None, n: int | None, facts: TestSetFacts) -> Cell:
    st = suite.eval.stages
    order = None if st is None else (st.seed, st.step)
    key = material = None
    if ck.identity is not None and ck.dtype is not None and facts.shas is not None:
        material = cell_key_material(ck, inputs.device_id, suite.eval.backend, suite.protocol, task, ds,
                                     facts.shas[0], facts.shas[1], prompt, shots, limit, dseed,
                                     inputs.harness[(task, ds, prompt)], order, inputs.study_tokens)
        key = store.key_of(material)
    return Cell(checkpoint=ck, task=task, dataset=ds, domain=gdata.all_datasets()[ds].domain, prompt=prompt,
                shots=shots, limit=limit, demo_seed=dseed, n=n, key=key, material=material, stages=order,
                count=facts.count)


def status_of(suite: Suite, cell: Cell, snapshot: Snapshot) -> CellStatus:
    """What the snapshot holds of a cell (nothing while its key is unknown)."""
    if cell.key is None:
        return CellStatus()
    rec, problem = judge(suite.output, cell.key, snapshot.get(cell.key), cell.n, staged=cell.staged)
    if rec is None:
        return CellStatus(problem=problem)
    done, stopped, st = True, None, suite.eval.stages
    if rec.stages is not None:
        stopped = rec.stages.stopped
        # a record stopped by a decision is finished while the suite stops on decisions; else it runs on
        done = stopped in ("exhausted", "limit") or (stopped == "decided" and st is not None and st.stop == "decided")
    return CellStatus(done=done, wall_s=rec.wall_s, held=rec.n, stopped=stopped)


def _state(suite: Suite, cell: Cell, snapshot: Snapshot) -> CellState:
    status = status_of(suite, cell, snapshot)
    # done: the items it holds (calibration compares this with wall_s); to do: the items left (staged: at most)
    items = (status.held if status.done else cell.n - status.held) if cell.n is not None else (cell.limit or 500)
    est = estimate.cell_seconds(cell.task, cell.shots, items, suite.eval.backend, suite.threads,
                                dtype=cell.checkpoint.dtype)
    return CellState(cell, status, est)


def plan_index(p: Plan, time: str) -> dict:
    """plans/<suite>.json: what the report and people read to know which cells are current and done."""
    return {
        "suite": p.suite.name,
        "file": str(p.suite.path),
        "time": time,
        "output": str(p.suite.output),
        "jobs": [{"run": j.run, "name": j.name, "seed": j.seed, "status": j.status, "recipe_hash": j.recipe_hash,
                  "config": str(j.config_path), "checkpoint": str(j.out_dir), "tokens_est": j.tokens_est,
                  "est_s": round(j.est_s, 1)} for j in p.jobs],
        "cells": [{"key": c.key, "model": c.checkpoint.id, "task": c.task, "dataset": c.dataset, "prompt": c.prompt,
                   "shots": c.shots, "limit": c.limit, "demo_seed": c.demo_seed, "done": c.done,
                   "problem": c.problem, "est_s": round(c.est_s, 1),
                   **({"held": c.held, "of": c.n, "stopped": c.stopped} if c.staged else {})} for c in p.cells],
        "estimate_s": {k: round(v, 1) for k, v in p.estimate().items()},
    }


def describe(p: Plan) -> list[str]:
    """The plan for people: fine-tunes, cells per checkpoint, problems, missing data, the time estimate."""
    s = p.suite
    fmt = fmt_duration
    lines = [f"suite {s.name} ({s.path}): output {s.output}"]
    done_jobs = sum(j.status == "done" for j in p.jobs)
    lines.append(f"  fine-tunes: {len(p.jobs)} ({done_jobs} done, {len(p.jobs) - done_jobs} to run)")
    for j in p.jobs:
        c = j.config
        what = (f"{c['task']}/{c['dataset']} train_{c['train_size']}"
                f"{'' if c['train_limit'] is None else ' first ' + str(c['train_limit'])} {j.method}"
                f"{' icl ' + str(c['icl_shots']) + ' ' + c['icl_demos'] if c['icl_shots'] else ''} seed {j.seed}")
        est = "" if j.status == "done" else f", ~{j.tokens_est // 1000}k tokens, ~{fmt(j.est_s)}"
        lines.append(f"    {j.run}: {what} [{j.status}{est}]")
    todo = p.todo_cells
    lines.append(f"  cells: {len(p.cells)} ({len(p.cells) - len(todo)} done, {len(todo)} to run) over "
                 f"{len(p.checkpoints)} checkpoints; device {p.device}, backend {s.eval.backend}, "
                 f"{s.protocol} protocol")
    for ck in p.checkpoints:
        cs = [c for c in p.cells if c.checkpoint is ck]
        left = [c for c in cs if not c.done]
        t = sum(c.est_s * p.ratios.get(c.family, 1.0) for c in left)
        lines.append(f"    {ck.id} ({ck.kind}{', ' + ck.task if ck.task else ''}): {len(cs)} cells, {len(left)} to run"
                     + (f", ~{fmt(t + estimate.LOAD_S)}" if left else ""))
    if s.eval.stages is not None:
        lines.append(stages.describe(p.cells, s.eval.stages.step, s.eval.stages.seed, s.eval.stages.stop))
    for problem in p.problems:
        lines.append(f"  not counted, will be re-run: {problem}")
    if p.missing_data:
        how = "`genft data builtin`" if s.source == "builtin" else (
            f"import from {s.study_src}" if s.study_src else
            f"`genft data import-study{' --protocol study' if s.protocol == 'study' else ''} --data-dir {s.data_dir}`")
        lines.append(f"  data missing in {s.data_dir}: {', '.join(p.missing_data)} (run: {how})")
    unknown = sum(1 for c in p.cells if c.key is None)
    if unknown:
        lines.append(f"  {unknown} cell keys are not known yet (data, model or fine-tune not there yet): counted as "
                     "to run")
    est = p.estimate()
    basis = (f"refined by {sum(c.done for c in p.cells)} finished cells "
             f"(x{', x'.join(f'{v:.2f} {k}' for k, v in sorted(p.ratios.items()))})"
             if p.ratios else "default time model: SmolLM2-135M on 2 CPU cores")
    other = sorted({m.model for m in s.models.values()} - {"smollm2-135m", "tiny"})
    if other and not p.ratios:
        basis += f"; NOT calibrated for {', '.join(other)} or a GPU: the estimate follows measured times once cells finish"
    lines.append(f"  estimated time left: ~{fmt(est['total'])} (fine-tunes ~{fmt(est['finetune'])}, evaluation "
                 f"~{fmt(est['eval'])}; backend {s.eval.backend}; {basis}; training at {p.train_tps:.0f} tokens/s)")
    return lines

