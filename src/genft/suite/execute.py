"""Where work happens on this machine: a `Trainer` makes one fine-tuned checkpoint (`finetune`: the hand-off
to finetune/sft.py), `evaluate_checkpoint` evaluates one checkpoint's cells (the hand-off to lm-eval, through
`genft.harness`) and writes each finished cell into the store; `set_threads` sets the torch threads of the
process that does either.  Who calls them, here or on a worker elsewhere, is `units`' executors' business.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import yaml

from .. import data as gdata
from .. import harness
from ..files import atomic_write, fmt_duration, now_utc
from ..metrics import GOLD, label_metric
from ..prompts import TARGET_DELIMITER, get_task, render_target
from ..training import FIELDS, MANIFEST, ManifestError, foreign_files, read_manifest
from . import stages, store
from .estimate import Progress
from .planning import CellState, Checkpoint, FinetuneJob
from .spec import REPO, Suite

SFT_SCRIPT = REPO / "finetune" / "sft.py"
Log = Callable[[str], None]


def set_threads(threads: int | None) -> None:
    """The suite's `threads:` for this process and the processes it starts (the driver, a worker)."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


class Trainer:
    """Runs one fine-tuning job so that job.out_dir ends up holding the model and its manifest."""

    def train(self, job: FinetuneJob, log: Log) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def write_config(job: FinetuneJob) -> None:
    """<output>/configs/<run>.yaml: the sft.py config the trainer runs (the suite file is the source of truth)."""
    cfg = {k: job.config[k] for k in FIELDS if k in job.config}
    header = (f"# Written by `genft suite run` for run {job.run}; the suite file is the source of truth.\n"
              f"# recipe hash {job.recipe_hash}\n")
    atomic_write(job.config_path, (header + yaml.safe_dump(cfg, sort_keys=False)).encode("utf-8"))


def finetune(job: FinetuneJob, trainer: Trainer, log: Log) -> str | None:
    """Make one fine-tuned checkpoint: clear a folder that holds another run, write the config, train, check
    the manifest's recipe hash against the plan's.  Returns None when done, else why it failed."""
    if job.status == "retrain":
        foreign = foreign_files(job.out_dir)
        if foreign:  # (planned before someone put them there): refuse, delete nothing
            return (f"{job.out_dir} holds files genft did not write ({', '.join(p.name for p in foreign[:5])}); genft "
                    f"never deletes them: move them out of {job.out_dir}, then re-run")
        log(f"fine-tune {job.run}: {job.out_dir} holds a run with another config or data, or without a requested "
            "step model (evaluate_checkpoints): removing it, retraining")
        trash = job.out_dir.with_name(f".{job.run}.old")
        shutil.rmtree(trash, ignore_errors=True)
        job.out_dir.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    write_config(job)
    t0 = time.time()
    try:
        trainer.train(job, log)
    except (RuntimeError, OSError) as e:
        return str(e)
    try:
        man = read_manifest(job.out_dir)
    except ManifestError as e:
        return str(e)
    if man is None:
        return f"the trainer exited without writing {job.out_dir / MANIFEST}"
    if man.config_hash != job.recipe_hash:
        return (f"its manifest's recipe hash {man.config_hash[:12]} differs from the suite's "
                f"{str(job.recipe_hash)[:12]} (the suite and finetune/sft.py disagree on the config)")
    log(f"fine-tune {job.run} done in {fmt_duration(time.time() - t0)}")
    return None


def _die_with_parent() -> None:
    """In the trainer's child process: end it when the suite process dies (even by kill -9), so that no
    orphaned trainer keeps writing into a checkpoint folder that the next suite run resumes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux / no glibc: best effort
        pass


def sft_command(job: FinetuneJob, script: Path = SFT_SCRIPT, python: str = sys.executable) -> list[str]:
    """`python finetune/sft.py --config ...`; under `accelerate launch` when the recipe trains on several
    processes (num_processes > 1: data parallel, on GPUs or, with gloo, on CPU cores) or names an accelerate
    config file (FSDP, DeepSpeed ZeRO-3: finetune/accelerate/*.yaml)."""
    n = int(job.config.get("num_processes") or 1)
    acfg = job.config.get("accelerate_config")
    if n == 1 and not acfg:
        return [python, str(script), "--config", str(job.config_path)]
    launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1"]
    launch += ["--config_file", str(acfg)] if acfg else ["--multi_gpu", "--mixed_precision", "no",
                                                         "--dynamo_backend", "no"]
    return launch + [str(script), "--config", str(job.config_path)]


class SubprocessTrainer(Trainer):
    """The real trainer: finetune/sft.py in a child process, its output streamed into the log."""

    def __init__(self, script: Path = SFT_SCRIPT, python: str = sys.executable):
        self.script = Path(script)
        self.python = python

    def train(self, job: FinetuneJob, log: Log) -> None:
        if not self.script.is_file():
            raise RuntimeError(f"{self.script}: the fine-tuning script is missing")
        env = dict(os.environ)
        if job.config.get("torch_threads"):
            env["OMP_NUM_THREADS"] = str(job.config["torch_threads"])
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = sft_command(job, self.script, self.python)
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


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalContext:
    suite: Suite
    log: Log
    progress: Progress
    device: str


@dataclass
class CheckpointWork:
    """A unit of evaluation: one checkpoint (one model load) and its missing cells."""

    checkpoint: Checkpoint
    cells: list[CellState]


def _random_demo_task(tm, name: str):
    """The task with lm-eval's seeded random sampler instead of the study's first-k (demo_seed cells)."""
    try:
        return tm._factory.build(tm._entry(name), overrides={"fewshot_config": {"sampler": "default"}},
                                 registry=tm._index)
    except AttributeError as e:  # lm-eval's private TaskManager API moved
        raise RuntimeError(f"random demonstrations need lm-eval 0.4.13's TaskManager internals ({e}); "
                           "use demos: fixed") from None


def _cost_weight(samples: list[dict], generation: bool) -> float:
    """How much of a shared lm-eval call's wall time a cell gets: its context characters (+ generation)."""
    w = 0.0
    for s in samples:
        for a in s.get("arguments") or []:
            ctx = a[0] if isinstance(a, (list, tuple)) and a else ""
            w += len(ctx) if isinstance(ctx, str) else 0
        if generation:
            w += 60 * 4 * 8  # 60 generated tokens cost about as much as a long context
    return w or 1.0


_VERSIONS: dict | None = None


def _versions() -> dict:
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = {}
        for name in ("genft", "lm_eval", "torch", "transformers"):
            try:
                _VERSIONS[name] = md.version(name.replace("_", "-"))
            except md.PackageNotFoundError:
                _VERSIONS[name] = None
    return _VERSIONS


def _finetune_info(job: FinetuneJob, weights: str, step: int | None = None) -> store.FinetuneInfo:
    c, man = job.config, job.manifest
    # measured for the final weights only
    wd = man.weight_deviation.mean_abs_diff if man is not None and step is None else None
    return store.FinetuneInfo(
        run=job.run, name=job.name, task=c["task"], dataset=c["dataset"], train_size=c["train_size"],
        train_limit=c["train_limit"], method=job.method, icl_shots=c["icl_shots"],
        icl_demos=c["icl_demos"] if c["icl_shots"] else None, seed=job.seed, num_processes=c["num_processes"],
        recipe_hash=job.recipe_hash, replicate_hash=job.replicate_hash,
        weights_sha256=weights,
        weight_deviation=wd)


def make_record(cell: CellState, suite: Suite, result: Mapping, samples: list[dict], wall: float, device: str,
                shared: int) -> store.CellRecord:
    """The store's record of one finished cell, from lm-eval's result and per-item samples."""
    return store.CellRecord(**_record_fields(cell, suite, result, sorted(samples, key=lambda s: s["doc_id"]), wall,
                                             device, shared))


def _record_fields(cell: CellState, suite: Suite, result: Mapping, samples: list[dict], wall: float, device: str,
                   shared: int) -> dict:
    """A record's fields from lm-eval's result and per-item samples, the items in the given order."""
    ck, spec = cell.checkpoint, get_task(cell.task)
    metrics = {k.split(",", 1)[0]: float(v) for k, v in result.items()
               if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    per_item = harness.per_item(spec, samples, by_doc_id=False)  # (unstaged callers sort by doc id first)
    items, outputs = per_item["items"], per_item["outputs"]
    majority = None
    if spec.is_classification:
        golds = [next((lab for lab in spec.labels if s.get(label_metric(GOLD, lab))), None) for s in samples]
        majority = max(golds.count(lab) for lab in spec.labels) / len(samples) if samples else None
    material = cell.material or {}
    demos = None if cell.demo_seed is not None and cell.shots else [
        render_target(spec, d).strip() for d in gdata.load_split(cell.task, cell.dataset, "demos", suite.data_dir)
        [:cell.shots]]
    return dict(
        key=cell.key, suite=suite.name, protocol=suite.protocol,
        checkpoint=store.CheckpointInfo(id=ck.id, kind=ck.kind, base=ck.base, path=ck.path, identity=ck.identity),
        finetune=_finetune_info(ck.job, ck.identity["weights"], ck.identity.get("step")) if ck.job is not None
        else None,
        task=cell.task, dataset=cell.dataset, domain=cell.domain, prompt=cell.prompt, shots=cell.shots,
        limit=cell.limit, demo_seed=cell.demo_seed, n=len(samples), doc_ids=per_item["doc_ids"],
        metrics=metrics, items=items, outputs=outputs, demo_targets=demos, majority_rate=majority, wall_s=round(wall, 3),
        provenance=store.Provenance(
            **_versions(), backend=suite.eval.backend, batch_size=suite.eval.batch_size, device=device,
            dtype=ck.dtype, hostname=socket.gethostname(), time=now_utc(), wall_s_shared_by=shared,
            data_sha256=material["test_sha256"], demos_sha256=material["demos_sha256"],
            harness_hash=material["harness"], target_delimiter=TARGET_DELIMITER),
        material=material)


def _mean(values: list) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def grow_record(cell: CellState, suite: Suite, result: Mapping, samples: list[dict], wall: float, device: str,
                shared: int) -> tuple[store.CellRecord, list[dict]]:
    """A staged cell's record after one more stage: its stored record (if any) with the stage's items
    appended in the order, the metrics recomputed over every item held.  Returns the record and the
    stage's samples in the order."""
    seed, step = cell.stages
    want = stages.next_items(seed, cell.count, cell.held, step, cell.n)
    pos = {d: i for i, d in enumerate(want)}
    if sorted(int(s["doc_id"]) for s in samples) != sorted(want):
        raise RuntimeError(f"{cell.label()}: lm-eval returned items {sorted(s['doc_id'] for s in samples)[:8]}..., "
                           f"the stage asked for {sorted(want)[:8]}...")
    samples = sorted(samples, key=lambda s: pos[int(s["doc_id"])])
    new = _record_fields(cell, suite, result, samples, wall, device, shared)
    for m, v in new["metrics"].items():  # merging per-item values needs lm-eval's aggregate to be their mean
        if m not in new["items"] or abs(v - _mean(new["items"][m])) > 1e-9:
            raise RuntimeError(f"{cell.label()}: lm-eval's {m} is not the mean of its per-item values; "
                               "this metric cannot be evaluated in stages (drop eval.stages)")
    if cell.held:
        old = store.read_cell(store.cell_path(suite.output, cell.key))
        if old.n != cell.held:
            raise RuntimeError(f"{store.cell_path(suite.output, cell.key)} changed while the suite ran")
        new["doc_ids"] = old.doc_ids + new["doc_ids"]
        new["outputs"] = old.outputs + new["outputs"]
        new["items"] = {m: old.items.get(m, [None] * old.n) + v for m, v in new["items"].items()}
        new["wall_s"] = round(old.wall_s + new["wall_s"], 3)
    new["n"] = len(new["doc_ids"])
    new["metrics"] = {m: _mean(new["items"][m]) for m in new["metrics"]}
    spec = get_task(cell.task)
    if spec.is_classification and new["n"]:
        new["majority_rate"] = max(sum(new["items"].get(label_metric(GOLD, lab), [])) for lab in spec.labels) / new["n"]
    new["stages"] = store.StageInfo(seed=seed, step=step, stage=stages.stage_of(new["n"], step), of=cell.count,
                                    stopped=stages.stop_reason(new["n"], cell.count, cell.n))
    return store.CellRecord(**new), samples


def _samples_bytes(samples: list[dict]) -> bytes:
    return "".join(json.dumps(s, default=str, ensure_ascii=False) + "\n" for s in samples).encode("utf-8")


def evaluate_checkpoint(work: CheckpointWork, ctx: EvalContext) -> None:
    """ONE model load for all the checkpoint's missing cells; one lm-eval call per (shots, demos, limit) group
    (eval.group: shots) or per cell (eval.group: cell); each finished cell is written at once.  A staged cell
    is evaluated on its next stage's items only, and its record grows by them (`grow_record`)."""
    suite, ck, ev = ctx.suite, work.checkpoint, ctx.suite.eval
    for name in ("lm_eval.api.task", "lm_eval.evaluator"):  # per-cell noise ("Overwriting num_fewshot")
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx.log(f"loading {ck.id} ({ck.path}) with {ev.backend} on {ctx.device} in {ck.dtype}")
    t0 = time.time()
    lm = harness.load_model(ck.path, ev.backend, batch_size=ev.batch_size, device=ctx.device, dtype=ck.dtype)
    ctx.progress.loaded()
    ctx.log(f"loaded {ck.id} in {time.time() - t0:.0f} s")
    tm = harness.task_manager(ck.path, suite.data_dir)
    groups: dict[tuple, list[CellState]] = defaultdict(list)
    for i, c in enumerate(work.cells):
        # staged cells name their items (lm-eval's samples); lm-eval takes a limit or samples, not both
        limit = "staged" if c.staged else c.limit
        gk = (c.shots, c.demo_seed, limit) if ev.group == "shots" else (c.shots, c.demo_seed, limit, i)
        groups[gk].append(c)
    for gk, cells in groups.items():
        shots, dseed, limit = gk[:3]
        specs = [_random_demo_task(tm, c.task_name) if dseed is not None else c.task_name for c in cells]
        chosen = None
        if limit == "staged":
            chosen = {c.task_name: sorted(stages.next_items(c.stages[0], c.count, c.held, c.stages[1], c.n))
                      for c in cells}
            limit = None
        t1 = time.time()
        res = harness.evaluate(lm, specs, num_fewshot=shots, limit=limit, protocol=suite.protocol,
                               pretrained=ck.path, data_root=suite.data_dir, samples=chosen,
                               log_samples=True, fewshot_random_seed=1234 if dseed is None else dseed, tm=tm)
        wall = time.time() - t1
        weights = {c.task_name: _cost_weight(res["samples"][c.task_name], c.family == "generation") for c in cells}
        total_w = sum(weights.values())
        for c in cells:
            samples, cwall = res["samples"][c.task_name], wall * weights[c.task_name] / total_w
            if c.staged:
                rec, samples = grow_record(c, suite, res["results"][c.task_name], samples, cwall, ctx.device,
                                           len(cells))
                old = store.samples_path(suite.output, c.key).read_bytes().splitlines(keepends=True)[:c.held] \
                    if c.held else []
                store.write_cell(suite.output, rec, b"".join(old) + _samples_bytes(samples))
            else:
                samples = sorted(samples, key=lambda s: s["doc_id"])
                rec = make_record(c, suite, res["results"][c.task_name], samples, cwall, ctx.device, len(cells))
                store.write_cell(suite.output, rec, _samples_bytes(samples))
            ctx.progress.finished(c, cwall, rec.metrics.get(c.metric))
    del lm
