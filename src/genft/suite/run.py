"""Running a suite: validate, plan, fine-tune what is missing, plan again (the new checkpoints' cell keys are
known once their weights are), evaluate what is missing, keep the index.  Locally, in this process; or as
units on a cluster engine (`cluster`), which the driver only orders.  It never writes the report: the
command line does that after `run_suite` (the suite does not import the report).

With eval.stages, evaluation runs in rounds (`stages.round_cells`): stage 1 of every cell, then the stop
decision (`decide`, passed in by the caller), then the next stage of the cells not stopped, until every cell
is stopped or holds its whole test set (or limit).
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
from .stages import Decide, in_step, round_cells, stage_items
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
              trainer: Trainer | None = None, log: Log = print, engine: str | None = None,
              decide: Decide | None = None) -> int:
    """Validate, plan and print the plan; unless dry_run: fine-tune and evaluate what is missing, here
    (the local executor) or on the engine of the suite's `executor:` block (`engine` overrides its kind).
    `decide` (staged suites with stop: decided): after each stage, given the records of every cell evaluated
    so far, returns {key: reason} of the cells that may stop; without it staged cells run to the end.
    Returns 0 when every cell is finished, 1 when something failed (finished cells are kept)."""
    suite = load_suite(path)
    if engine is not None:
        suite = dataclasses.replace(suite, executor=suite.executor.model_copy(update={"kind": engine}))
    if executor is None:
        executor = make_executor(suite.executor)
    if not isinstance(executor, ClusterExecutor):  # this machine trains and evaluates: can it run the dtype?
        planning.check_precision(suite, planning.resolve_device(suite.eval.device))
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
        decide = _stop_rule(suite, decide, log)
        if isinstance(executor, ClusterExecutor):
            return _run_elsewhere(suite, p, executor, cache, log, decide)
        if not _todo(p, failed):
            log("every cell is finished: nothing to evaluate")
        stalled = _Stalled()
        rounds = 0
        while True:  # one round: every cell at once, or with eval.stages one stage of the cells still running
            p = _decide(suite, p, decide, cache, failed, log)
            todo = [c for c in _todo(p, failed) if rounds == 0 or c.staged]  # unstaged cells: one try a run
            if not todo or stalled(todo):
                break
            rounds += 1
            unknown = [c for c in todo if c.key is None]
            if unknown:
                raise SuiteError(f"{suite.path}: {len(unknown)} cell keys are unknown after provisioning and training "
                                 f"(e.g. {unknown[0].label()}): {unknown[0].unknown_key_reason()}")
            cells = [_this_stage(c) for c in round_cells(todo)]
            for c in cells:
                if c.problem:
                    log(f"re-running a cell whose file cannot count: {c.problem}")
            ctx = EvalContext(suite=suite, log=log, progress=Progress(cells, p.ratios, log), device=p.device)
            works: dict[str, CheckpointWork] = {}
            for c in cells:
                works.setdefault(c.checkpoint.id, CheckpointWork(c.checkpoint, [])).cells.append(c)
            (executor or LocalExecutor()).run(list(works.values()), ctx)
            p = planning.plan(suite, provision=True, fingerprints=cache)
            store.write_index(suite.output, planning.plan_index(p, now_utc()))
        left = [c for c in p.todo_cells if _run_of(c) not in failed]
        if left:
            log(f"{len(left)} cells are still not finished, e.g. {left[0].label()}; re-run the suite")
            return 1
        if failed:
            log(f"FAILED fine-tunes: {', '.join(failed)}; their cells were skipped; re-run the suite to retry")
            return 1
    return 0


def _todo(p: planning.Plan, failed: list[str]) -> list[planning.Cell]:
    return [c for c in p.todo_cells if _run_of(c) not in failed]


def _this_stage(c: planning.Cell) -> planning.Cell:
    """A staged cell with the time estimate of its next stage (the plan's covers every item left)."""
    if not c.staged or c.n is None or c.n <= c.held:
        return c
    seed, step = c.stages
    part = (stage_items(c.stage + 1, step, c.n) - c.held) / (c.n - c.held)
    return dataclasses.replace(c, est_s=c.est_s * part)


class _Stalled:
    """True when a round left the cells still to do as they were (same cells, same items held): then the
    rounds end, and the run reports the unfinished cells instead of evaluating them again and again."""

    def __init__(self):
        self.seen: tuple | None = None

    def __call__(self, todo: list[planning.Cell]) -> bool:
        state = tuple((c.key, c.held) for c in todo)
        same, self.seen = state == self.seen, state
        return same


def _stop_rule(suite: Suite, decide: Decide | None, log: Log) -> Decide | None:
    """The stop decision in force: the caller's, for a staged suite that stops on decisions."""
    st = suite.eval.stages
    if st is None or st.stop != "decided":
        return None
    if decide is None:
        log("eval.stages.stop is decided, but this run was given no stop decision: staged cells run to the end")
    return decide


def _decide(suite: Suite, p: planning.Plan, decide: Decide | None, cache: dict, failed: list[str],
            log: Log) -> planning.Plan:
    """When the running staged cells all hold the same stage (and no unstaged cell is left), stop the ones
    the decision names: their records say stopped: decided and its reason.  Returns the plan, re-read."""
    todo = _todo(p, failed)
    if decide is None or not in_step(todo):
        return p
    records = [store.read_cell(store.cell_path(suite.output, c.key)) for c in p.cells
               if c.key and c.held and _run_of(c) not in failed]
    verdict = dict(decide(records))
    known = {c.key for c in p.cells}
    unknown = [k for k in verdict if k not in known]
    if unknown:
        raise SuiteError(f"{suite.path}: the stop decision named cell {str(unknown[0])[:12]}, which is not in the plan")
    running = {c.key: c for c in todo}
    stop = [k for k in verdict if k in running]
    for k in stop:
        store.stop_cell(suite.output, k, verdict[k])
        c = running[k]
        log(f"stopped after stage {c.stage} ({c.held} of {c.n} items): {c.label(stage=False)}: {verdict[k]}")
    if not stop:
        return p
    p = planning.plan(suite, provision=True, fingerprints=cache)
    store.write_index(suite.output, planning.plan_index(p, now_utc()))
    return p


def _run_elsewhere(suite: Suite, p: planning.Plan, executor: ClusterExecutor, cache: dict, log: Log,
                   decide: Decide | None = None) -> int:
    """The plan's units on a cluster engine, a round at a time (with eval.stages: a stage, then the stop
    decision); then what the shared store holds is the result."""
    failed: list[str] = []
    stalled = _Stalled()
    rounds = 0
    while True:
        p = _decide(suite, p, decide, cache, [], log)
        units = units_of(p)
        if not units or stalled(p.todo_cells) or (rounds and not any(c.staged for c in p.todo_cells)):
            break  # unstaged cells: one try a run
        rounds += 1
        failed = executor.run_units(suite.path, units, suite.output, log)
        n = store.clean_temp(suite.output)  # what killed attempts left: never a cell
        if n:
            log(f"removed {n} temporary files left by killed attempts")
        p = planning.plan(suite, provision=True, fingerprints=cache)
        store.write_index(suite.output, planning.plan_index(p, now_utc()))
        if failed:
            break
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
