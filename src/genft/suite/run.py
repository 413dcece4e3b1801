"""Running a suite: validate, plan, fine-tune what is missing, plan again (the new checkpoints' cell keys are
known once their weights are), evaluate what is missing, keep the index.  Locally, in this process; or as
units on a cluster engine (`cluster`), which the driver only orders.  It never writes the report: the
command line does that after `run_suite` (the suite does not import the report).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from .. import data as gdata
from ..builtin import generate
from ..files import fmt_duration, now_utc
from . import planning, store
from .cluster import ClusterExecutor, make_executor
from .estimate import Progress
from .execute import CheckpointWork, EvalContext, Executor, LocalExecutor, SubprocessTrainer, Trainer, finetune
from .schema import SuiteError
from .spec import Suite, load_suite
from .units import units_of

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


def run_finetunes(p: planning.Plan, trainer: Trainer, log: Log) -> list[str]:
    """Train what is missing, in order; returns the runs that failed (their cells are skipped)."""
    failed = []
    todo = p.todo_jobs
    for i, job in enumerate(todo, 1):
        log(f"fine-tune [{i}/{len(todo)}] {job.run} ({'resuming' if job.status == 'resume' else 'new'}; "
            f"~{fmt_duration(job.est_s)})")
        error = finetune(job, trainer, log)
        if error:
            log(f"fine-tune {job.run} FAILED: {error}")
            failed.append(job.run)
    return failed


def _run_of(cell: planning.Cell) -> str:
    """The fine-tuning run a cell's checkpoint comes from (its final or an intermediate model), or its base."""
    return cell.checkpoint.job.run if cell.checkpoint.job is not None else cell.checkpoint.id


def _set_threads(threads: int | None) -> None:
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def run_suite(path: str | os.PathLike, dry_run: bool = False, executor: Executor | ClusterExecutor | None = None,
              trainer: Trainer | None = None, log: Log = print, engine: str | None = None) -> int:
    """Validate, plan and print the plan; unless dry_run: fine-tune and evaluate what is missing, here
    (the local executor) or on the engine of the suite's `executor:` block (`engine` overrides its kind).
    Returns 0 when every cell is finished, 1 when something failed (finished cells are kept)."""
    suite = load_suite(path)
    if engine is not None:
        suite = dataclasses.replace(suite, executor=suite.executor.model_copy(update={"kind": engine}))
    if executor is None:
        executor = make_executor(suite.executor)
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
        if p.todo_jobs and not isinstance(executor, ClusterExecutor):
            failed = run_finetunes(p, trainer or SubprocessTrainer(), log)
            p = planning.plan(suite, provision=True, fingerprints=cache)  # the trained weights' identities
        store.save_fingerprint_cache(suite.output, cache)
        store.write_index(suite.output, planning.plan_index(p, now_utc()))
        if isinstance(executor, ClusterExecutor):
            return _run_elsewhere(suite, p, executor, cache, log)
        todo = [c for c in p.todo_cells if _run_of(c) not in failed]
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
        left = [c for c in p.todo_cells if _run_of(c) not in failed]
        if left:
            log(f"{len(left)} cells are still not finished, e.g. {left[0].label()}; re-run the suite")
            return 1
        if failed:
            log(f"FAILED fine-tunes: {', '.join(failed)}; their cells were skipped; re-run the suite to retry")
            return 1
    return 0


def _run_elsewhere(suite: Suite, p: planning.Plan, executor: ClusterExecutor, cache: dict, log: Log) -> int:
    """The plan's units on a cluster engine; then what the shared store holds is the result."""
    units = units_of(p)
    failed = executor.run_units(suite.path, units, suite.output, log) if units else []
    n = store.clean_temp(suite.output)  # what killed attempts left: never a cell
    if n:
        log(f"removed {n} temporary files left by killed attempts")
    p = planning.plan(suite, provision=True, fingerprints=cache)
    store.write_index(suite.output, planning.plan_index(p, now_utc()))
    left = p.todo_cells
    if failed or left:
        log(f"{len(failed)} units failed ({', '.join(failed) or 'none'}), {len(left)} cells not finished; "
            "re-run the suite to retry")
        return 1
    return 0


def output_of(suite: Suite | str | os.PathLike) -> Path:
    """A suite's output folder: of a Suite, a suite file, or an output folder itself."""
    if isinstance(suite, Suite):
        return suite.output
    p = Path(suite)
    return load_suite(p).output if p.is_file() else p.resolve()
