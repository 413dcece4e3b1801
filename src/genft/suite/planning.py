"""Planning: a pure function from a suite and the store's contents to a frozen plan of fine-tune jobs and
evaluation cells, each cell keyed by everything that determines its numbers.

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
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .. import data as gdata
from ..files import fmt_duration, read_json_or_none, sha256_cached
from ..harness import task_name, tasks_dir
from ..prompts import TARGET_DELIMITER, get_task
from ..training import (MANIFEST, RUN_FILE, ConfigError, config_from_mapping, config_hash, foreign_files,
                        load_training_items, validate)
from ..training.steps import missing_steps, step_dir
from . import estimate, stages, store
from ..models import hub_cache
from .identity import (_fingerprint, base_identity, check_precision, device_identity,  # noqa: F401 (re-exported)
                       effective_dtype, resolve_device)
from .spec import Suite, TestSet
from .schema import SuiteError


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
    manifest: dict | None  # the finished run's manifest (status done)
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
    est_s: float
    done: bool
    problem: str | None  # a file is there but cannot count (named, re-run)
    wall_s: float | None  # measured, when done
    stages: tuple[int, int] | None = None  # staged evaluation: (seed, step) of the items' order
    count: int | None = None  # items in the test set (the order's length)
    held: int = 0  # items its stored record holds (staged cells grow stage by stage)
    stopped: str | None = None  # a staged record's stop reason (decided / exhausted / limit)

    @property
    def staged(self) -> bool:
        return self.stages is not None

    @property
    def stage(self) -> int:
        """Stages evaluated (0: none yet; unstaged cells: 0)."""
        return stages.stage_of(self.held, self.stages[1]) if self.stages else 0

    @property
    def task_name(self) -> str:
        return task_name(self.task, self.dataset, self.prompt)

    @property
    def family(self) -> str:
        return get_task(self.task).family

    @property
    def metric(self) -> str:
        return get_task(self.task).primary_metric

    def label(self, stage: bool = True) -> str:
        """What a person reads; `stage`: name the stage it runs next (staged cells still running)."""
        demos = "" if self.demo_seed is None else f" random demos seed {self.demo_seed}"
        stage = f" stage {self.stage + 1}" if stage and self.staged and not self.done else ""
        return f"{self.task_name} {self.shots}-shot{demos} on {self.checkpoint.id}{stage}"

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
class Plan:
    suite: Suite
    device: str  # what the backend is given (cpu, cuda, cuda:N, mps)
    jobs: tuple[FinetuneJob, ...]
    checkpoints: tuple[Checkpoint, ...]
    cells: tuple[Cell, ...]
    missing_data: tuple[str, ...]
    ratios: dict  # measured / default time per task family
    train_tps: float

    @property
    def todo_cells(self) -> list[Cell]:
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


# ---------------------------------------------------------------- cells


def harness_hash(task: str, dataset: str, prompt: int) -> str:
    """The hash of the files that determine a cell's prompts and scores: its task YAML, the templates it
    includes, the loader/scorer (harness_tasks/utils.py) and the genft modules they render and score with."""
    root = tasks_dir()
    kind = get_task(task).kind
    here = Path(__file__).resolve().parents[1]
    files = [root / f"_genft_{kind}.yaml", root / task / f"_{task}.yaml",
             root / task / f"{task_name(task, dataset, prompt)}.yaml", root / "utils.py",
             here / "metrics.py", here / "prompts.py"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update((sha256_cached(p) if p.is_file() else "missing").encode())
    return h.hexdigest()


def study_tokens_hash() -> str:
    """The hash of the modules that build a study-protocol cell's token ids (genft.study_tokens, protocol_lm and
    data/protocol.py): part of study-protocol cells' keys only, so that a change to the study's tokens re-runs them."""
    here = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in (here / "study_tokens.py", here / "protocol_lm.py", here / "data" / "protocol.py"):
        h.update(p.name.encode())
        h.update(sha256_cached(p).encode())
    return h.hexdigest()


def cell_key_material(checkpoint: Checkpoint, device: str, backend: str, protocol: str, task: str, dataset: str,
                      test_sha: str, demos_sha: str, prompt: int, shots: int, limit: int | None,
                      demo_seed: int | None, stages: tuple[int, int] | None = None) -> dict:
    """Everything that determines a cell's numbers; its sha256 is the cell key.  `stages`: (seed, step) of a
    staged cell's item order (unstaged cells' keys do not have the entry)."""
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
        "harness": harness_hash(task, dataset, prompt),
        **staged,
    }
    if protocol == "study":
        material["study_tokens"] = study_tokens_hash()
    return material


def test_count(task: str, dataset: str, root: Path) -> int | None:
    folder = gdata.dataset_dir(task, dataset, root)
    if (folder / "meta.json").is_file():
        try:
            return int(gdata.read_meta(task, dataset, root)["files"]["test"]["count"])
        except (KeyError, ValueError, TypeError, gdata.DataError):
            pass
    path = folder / "test.jsonl"
    if path.is_file():
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return None


def needed_datasets(suite: Suite) -> list[TestSet]:
    need = list(suite.eval.test_sets)
    for r in suite.runs:
        pair = (r.values["task"], r.values["dataset"])
        if pair not in need:
            need.append(pair)
    return need


def missing_datasets(suite: Suite) -> list[str]:
    return [f"{t}/{d}" for t, d in needed_datasets(suite)
            if not (gdata.dataset_dir(t, d, suite.data_dir) / "test.jsonl").is_file()]


def check_protocol(suite: Suite) -> None:
    """Every data set the suite reads was written under the suite's protocol (data.protocol)."""
    for t, d in needed_datasets(suite):
        if (gdata.dataset_dir(t, d, suite.data_dir) / "test.jsonl").is_file():
            have = gdata.read_protocol(t, d, suite.data_dir)
            if have != suite.protocol:
                raise SuiteError(f"{suite.path}: data.protocol is {suite.protocol} but {t}/{d} in {suite.data_dir} "
                                 f"was written under the {have} protocol; import the study's data with "
                                 f"`genft data import-study --protocol {suite.protocol} --data-dir DIR` into another "
                                 "folder and point data.data_dir at it")


# ---------------------------------------------------------------- the plan


def finetune_config(suite: Suite, spec, seed: int, out_dir: Path):
    values = dict(spec.values)
    values.update(model_name_or_path=suite.models[spec.base].model, output_dir=str(out_dir),
                  data_dir=str(suite.data_dir), seed=seed)
    if suite.threads and values.get("torch_threads") is None:
        values["torch_threads"] = suite.threads
    if values.get("report_to") and values.get("run_name") is None:  # the tracker's name for the run
        values["run_name"] = f"{suite.name}/{out_dir.name}"
    return validate(config_from_mapping(values, str(suite.path)))


def _job(suite: Suite, spec, run: str, seed: int, missing: list[str], tps: dict[bool, list[float]]) -> FinetuneJob:
    out_dir = suite.checkpoints_dir / run
    cfg = finetune_config(suite, spec, seed, out_dir)
    chash = rhash = None
    if f"{cfg.task}/{cfg.dataset}" not in missing:
        try:
            _, _, files, _ = load_training_items(cfg)
        except (ConfigError, gdata.DataError) as e:
            raise SuiteError(f"{suite.path}: finetune[{spec.index}] ({spec.name}): {e}") from None
        chash, rhash = config_hash(cfg, files), config_hash(cfg, files, seed=False)
    man = read_json_or_none(out_dir / MANIFEST)
    started = man or read_json_or_none(out_dir / RUN_FILE)
    status = "todo"
    if chash and man and man.get("config_hash") == chash and missing_steps(man, cfg.step_models):
        status = "retrain"  # finished without a step model now asked for: trained again
    elif chash and man and man.get("config_hash") == chash:
        status = "done"
        t = (man.get("training") or {}).get("tokens_per_s")
        if t:
            tps.setdefault(bool((man.get("device") or {}).get("bf16")), []).append(float(t))
    elif chash and started and started.get("config_hash") == chash:
        status = "resume"
    elif started or (out_dir.exists() and any(out_dir.iterdir())):
        foreign = foreign_files(out_dir)
        if foreign:  # never cleared: what genft did not write stays, and the run waits for the folder
            other = "a run of another config and " if started else ""
            raise SuiteError(
                f"{suite.path}: finetune[{spec.index}] ({spec.name}): {out_dir} holds {other}files genft did not write "
                f"({', '.join(p.name for p in foreign[:5])}{', ...' if len(foreign) > 5 else ''}); genft never deletes "
                f"them: move them out of {out_dir} (or delete the folder yourself), then re-run")
        status = "retrain"
    return FinetuneJob(run=run, name=spec.name, index=spec.index, seed=seed, method=spec.method,
                       config=dataclasses.asdict(cfg), out_dir=out_dir,
                       config_path=suite.output / "configs" / f"{run}.yaml", recipe_hash=chash, replicate_hash=rhash,
                       status=status, manifest=man if status == "done" else None,
                       tokens_est=estimate.training_tokens(cfg, suite.data_dir), est_s=0.0)


def plan(suite: Suite, provision: bool = False, fingerprints: dict | None = None) -> Plan:
    """Fine-tune jobs, then evaluation cells (checkpoint x test set x prompt x shots x demos) with keys and
    what the store already holds.  Reads data and model files (for their hashes); loads no model; writes
    nothing (`fingerprints`, a cache the caller may save, is filled).  Cells whose key cannot be known yet
    (data missing, a model not provisioned, a checkpoint not trained) are planned as to do."""
    root = suite.data_dir
    missing = missing_datasets(suite)
    check_protocol(suite)
    cache = fingerprints if fingerprints is not None else {}
    device = resolve_device(suite.eval.device)
    device_id = device_identity(device)
    bases = {mid: base_identity(m.model, cache, provision) for mid, m in suite.models.items()}

    tps: dict[bool, list[float]] = {}  # measured tokens/s of finished runs, by bf16 mixed precision
    jobs = [_job(suite, spec, run, seed, missing, tps) for spec in suite.runs for run, seed in spec.run_names()]
    rates = {bf16: estimate.train_rate(tps.get(bf16, []), suite.threads, bf16) for bf16 in (False, True)}
    train_tps = rates[False]
    jobs = [dataclasses.replace(j, est_s=j.tokens_est / rates[bool(j.config.get("bf16"))]) for j in jobs]

    checkpoints: list[Checkpoint] = []
    for mid, m in suite.models.items():
        path, ident = bases[mid]
        if m.evaluate:
            checkpoints.append(Checkpoint(id=mid, kind="base", base=mid, path=path, dtype=effective_dtype(path, m.dtype),
                                          identity=None if ident is None else {"model": ident}))
    runs = {r.index: r for r in suite.runs}
    for job in jobs:
        base_id = runs[job.index].base
        bident = bases[base_id][1]
        ident = None
        if job.manifest is not None and bident is not None:
            weights = job.manifest.get("weights_sha256") or _fingerprint(job.out_dir, cache)
            ident = {"base": bident, "recipe_hash": job.recipe_hash, "weights": weights}
        checkpoints.append(Checkpoint(id=job.run, kind="finetuned", base=base_id, path=str(job.out_dir),
                                      dtype=effective_dtype(str(job.out_dir), suite.models[base_id].dtype),
                                      identity=ident, job=job))
        for step in job.config.get("step_models") or []:  # intermediate models: checkpoints of their own
            folder = step_dir(job.out_dir, step)
            saved = ((job.manifest or {}).get("steps") or {}).get(str(step))
            checkpoints.append(Checkpoint(
                id=f"{job.run}@step{step}", kind="finetuned", base=base_id, path=str(folder),
                dtype=effective_dtype(str(folder), suite.models[base_id].dtype), job=job,
                identity=None if ident is None or not saved else {**ident, "weights": saved["weights_sha256"],
                                                                  "step": step}))

    ev = suite.eval
    shas: dict[TestSet, tuple[str, str] | None] = {}
    cells: list[Cell] = []
    for ck in checkpoints:
        own = runs[ck.job.index].test_sets if ck.job else None
        for task, ds in ev.test_sets:
            if own is not None and (task, ds) not in own:
                continue
            folder = gdata.dataset_dir(task, ds, root)
            if (task, ds) not in shas:
                ok = f"{task}/{ds}" not in missing and (folder / "demos.jsonl").is_file()
                shas[(task, ds)] = (sha256_cached(folder / "test.jsonl"), sha256_cached(folder / "demos.jsonl")) \
                    if ok else None
            sha = shas[(task, ds)]
            which = "base" if ck.kind == "base" else ("same_task" if task == ck.task else "cross_task")
            limit = ev.limit[task]
            count = test_count(task, ds, root)
            n = None if count is None else min(count, limit) if limit else count
            for prompt in ev.prompts[which][task]:
                for shots in ev.shots[task]:
                    seeds: list[int | None] = []
                    if ev.demos in ("fixed", "both") or shots == 0:
                        seeds.append(None)
                    if ev.demos in ("random", "both") and shots > 0:
                        seeds += list(ev.demo_seeds)
                    for dseed in seeds:
                        cells.append(_cell(suite, ck, device_id, task, ds, prompt, shots, limit, dseed, n, sha,
                                           count))
    ratios = estimate.calibrate((c.family, c.wall_s, c.est_s) for c in cells if c.done and c.wall_s)
    return Plan(suite=suite, device=device, jobs=tuple(jobs), checkpoints=tuple(checkpoints), cells=tuple(cells),
                missing_data=tuple(missing), ratios=ratios, train_tps=train_tps)


def _cell(suite: Suite, ck: Checkpoint, device_id: str, task: str, ds: str, prompt: int, shots: int,
          limit: int | None, dseed: int | None, n: int | None, sha: tuple[str, str] | None, count: int | None) -> Cell:
    st = suite.eval.stages
    order = None if st is None else (st.seed, st.step)
    key = material = None
    if ck.identity is not None and ck.dtype is not None and sha is not None:
        material = cell_key_material(ck, device_id, suite.eval.backend, suite.protocol, task, ds, sha[0], sha[1],
                                     prompt, shots, limit, dseed, order)
        key = store.key_of(material)
    rec, problem = store.check_cell(suite.output, key, n, staged=order is not None) if key else (None, None)
    done, held, stopped = rec is not None, rec.n if rec is not None else 0, None
    if rec is not None and rec.stages is not None:
        stopped = rec.stages.stopped
        # a record stopped by a decision is finished while the suite stops on decisions; else it runs on
        done = stopped in ("exhausted", "limit") or (stopped == "decided" and st is not None and st.stop == "decided")
    # done: the items it holds (calibration compares this with wall_s); to do: the items left (staged: at most)
    items = (held if done else n - held) if n is not None else (limit or 500)
    est = estimate.cell_seconds(task, shots, items, suite.eval.backend, suite.threads,
                                dtype=ck.dtype)
    return Cell(checkpoint=ck, task=task, dataset=ds, domain=gdata.all_datasets()[ds].domain, prompt=prompt,
                shots=shots, limit=limit, demo_seed=dseed, n=n, key=key, material=material, est_s=est,
                done=done, problem=problem, wall_s=rec.wall_s if rec is not None else None, stages=order,
                count=count, held=held, stopped=stopped)


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

