"""Running a suite: validate, plan, fine-tune what is missing, plan again (the new checkpoints' cell keys are
known once their weights are), evaluate what is missing, keep the index.  It never writes the report: the
command line does that after `run_suite` (the suite does not import the report).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from .. import data as gdata
from ..builtin import generate
from ..files import atomic_write, fmt_duration, now_utc, read_json_or_none
from ..training import FIELDS, MANIFEST
from . import planning
from . import store
from .estimate import Progress
from .execute import CheckpointWork, EvalContext, Executor, LocalExecutor, SubprocessTrainer, Trainer
from .schema import SuiteError
from .spec import Suite, load_suite

Log = Callable[[str], None]


def ensure_data(suite: Suite, log: Log) -> None:
    missing = planning.missing_datasets(suite)
    if not missing:
        return
    if suite.source == "builtin":
        log(f"data: writing genft's builtin data into {suite.data_dir} (missing: {', '.join(missing)})")
        generate(suite.data_dir, log=lambda *_: None)
    elif suite.study_src is not None:
        log(f"data: importing the study's release from {suite.study_src} into {suite.data_dir}")
        gdata.import_study(suite.study_src, suite.data_dir, log=lambda *_: None, protocol=suite.protocol)
    else:
        flag = " --protocol study" if suite.protocol == "study" else ""
        raise SuiteError(f"{suite.path}: data sets missing in {suite.data_dir}: {', '.join(missing)}; run "
                         f"`genft data import-study{flag} --data-dir {suite.data_dir}` (downloads the study's release "
                         "at its pinned commit, every file sha256-checked; offline, pass its folder or archive), or "
                         f"`genft data build-hub all --data-dir {suite.data_dir}` (clean protocol, from the public hub data "
                         "sets), or set data.study_src in the suite")
    still = planning.missing_datasets(suite)
    if still:
        raise SuiteError(f"{suite.path}: data sets still missing in {suite.data_dir}: {', '.join(still)}")


def _write_config(job: planning.FinetuneJob) -> None:
    cfg = {k: job.config[k] for k in FIELDS if k in job.config}
    header = (f"# Written by `genft suite run` for run {job.run}; the suite file is the source of truth.\n"
              f"# recipe hash {job.recipe_hash}\n")
    atomic_write(job.config_path, (header + yaml.safe_dump(cfg, sort_keys=False)).encode("utf-8"))


def run_finetunes(p: planning.Plan, trainer: Trainer, log: Log) -> list[str]:
    """Train what is missing; returns the runs that failed (their cells are skipped)."""
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
            f"~{fmt_duration(job.est_s)})")
        t0 = time.time()
        try:
            trainer.train(job, log)
        except (RuntimeError, OSError) as e:
            log(f"fine-tune {job.run} FAILED: {e}")
            failed.append(job.run)
            continue
        man = read_json_or_none(job.out_dir / MANIFEST)
        if not man:
            log(f"fine-tune {job.run} FAILED: the trainer exited without writing {job.out_dir / MANIFEST}")
            failed.append(job.run)
        elif man.get("config_hash") != job.recipe_hash:
            log(f"fine-tune {job.run} FAILED: its manifest's recipe hash {str(man.get('config_hash'))[:12]} differs "
                f"from the suite's {str(job.recipe_hash)[:12]} (the suite and finetune/sft.py disagree on the config)")
            failed.append(job.run)
        else:
            log(f"fine-tune {job.run} done in {fmt_duration(time.time() - t0)}")
    return failed


def _set_threads(threads: int | None) -> None:
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def run_suite(path: str | os.PathLike, dry_run: bool = False, executor: Executor | None = None,
              trainer: Trainer | None = None, log: Log = print) -> int:
    """Validate, plan and print the plan; unless dry_run: fine-tune and evaluate what is missing.
    Returns 0 when every cell is finished, 1 when something failed (finished cells are kept)."""
    suite = load_suite(path)
    if dry_run:
        for line in planning.describe(planning.plan(suite)):
            log(line)
        log("dry run: nothing was done")
        return 0
    with store.Lock(suite.output):
        n = store.clean_temp(suite.output)
        if n:
            log(f"removed {n} temporary files left by an interrupted run")
        _set_threads(suite.threads)
        ensure_data(suite, log)
        cache = store.fingerprint_cache(suite.output)
        p = planning.plan(suite, provision=True, fingerprints=cache)
        for line in planning.describe(p):
            log(line)
        failed: list[str] = []
        if p.todo_jobs:
            failed = run_finetunes(p, trainer or SubprocessTrainer(), log)
            p = planning.plan(suite, provision=True, fingerprints=cache)  # the trained weights' identities
        store.save_fingerprint_cache(suite.output, cache)
        store.write_index(suite.output, planning.plan_index(p, now_utc()))
        todo = [c for c in p.todo_cells if c.checkpoint.id not in failed]
        if todo:
            unknown = [c for c in todo if c.key is None]
            if unknown:
                raise SuiteError(f"{suite.path}: {len(unknown)} cell keys are unknown after provisioning and training "
                                 f"(e.g. {unknown[0].label()}): data or model missing")
            for c in todo:
                if c.problem:
                    log(f"re-running a cell whose file cannot count: {c.problem}")
            ctx = EvalContext(suite=suite, log=log, progress=Progress(todo, p.ratios, log), device=p.device)
            works: dict[str, CheckpointWork] = {}
            for c in todo:
                works.setdefault(c.checkpoint.id, CheckpointWork(c.checkpoint, [])).cells.append(c)
            (executor or LocalExecutor()).run(list(works.values()), ctx)
            p = planning.plan(suite, provision=True, fingerprints=cache)
            store.write_index(suite.output, planning.plan_index(p, now_utc()))
        else:
            log("every cell is finished: nothing to evaluate")
        left = [c for c in p.todo_cells if c.checkpoint.id not in failed]
        if left:
            log(f"{len(left)} cells are still not finished, e.g. {left[0].label()}; re-run the suite")
            return 1
        if failed:
            log(f"FAILED fine-tunes: {', '.join(failed)}; their cells were skipped; re-run the suite to retry")
            return 1
    return 0


def output_of(suite: Suite | str | os.PathLike) -> Path:
    """A suite's output folder: of a Suite, a suite file, or an output folder itself."""
    if isinstance(suite, Suite):
        return suite.output
    p = Path(suite)
    return load_suite(p).output if p.is_file() else p.resolve()
