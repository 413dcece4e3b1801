"""Running a suite: validate, plan, then rounds of units -- fine-tunes, then the evaluations of what is
missing -- on the suite's executor (`units.Executor`: local, Ray or Slurm, one interface), keeping the index.
The plan is computed once per step: at the start, and after each round (the store and, after fine-tunes,
the checkpoints changed).  It never writes the report: the command line does that after `run_suite` (the
suite does not import the report).

With eval.stages, evaluation runs in rounds (`stages.round_cells`): stage 1 of every cell, then the stop
decision (`decide`, passed in by the caller), then the next stage of the cells not stopped, until every cell
is stopped or holds its whole test set (or limit).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from .. import data as gdata
from ..builtin import generate
from ..files import now_utc
from . import planning, snapshot, store
from .cluster import make_executor
from .execute import Trainer, set_threads
from .identity import check_precision, resolve_device
from .observe import missing_datasets, observe, read_plan
from .schema import SuiteError
from .spec import Suite, load_suite
from .stages import Decide, in_step
from .units import Executor, live_cells, skipped, units_of

Log = Callable[[str], None]


def ensure_data(suite: Suite, log: Log) -> None:
    missing = missing_datasets(suite)
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
    still = missing_datasets(suite)
    if still:
        raise SuiteError(f"{suite.path}: data sets still missing in {suite.data_dir}: {', '.join(still)}")


def run_suite(path: str | os.PathLike, dry_run: bool = False, executor: Executor | str | None = None,
              trainer: Trainer | None = None, log: Log = print, decide: Decide | None = None) -> int:
    """Validate, plan and print the plan; unless dry_run: fine-tune and evaluate what is missing on an
    executor: the one given, or the suite's `executor:` block's (a kind name -- local, ray, slurm -- overrides
    the block's kind; `trainer`: the local executor's).  `decide` (staged suites with stop: decided): after
    each stage, given the records of every cell evaluated so far, returns {key: reason} of the cells that may
    stop; without it staged cells run to the end.  Returns 0 when every cell is finished, 1 when something
    failed (finished cells are kept)."""
    suite = load_suite(path)
    if isinstance(executor, str):
        suite = dataclasses.replace(suite, executor=suite.executor.model_copy(update={"kind": executor}))
    if not isinstance(executor, Executor):
        executor = make_executor(suite.executor, trainer)
    if executor.here:  # this machine trains and evaluates: can it run the dtype?
        check_precision(suite, resolve_device(suite.eval.device))
    if dry_run:
        for line in planning.describe(read_plan(suite)):
            log(line)
        log("dry run: nothing was done")
        return 0
    with store.Lock(suite.output):
        n = store.clean_temp(suite.output)
        if n:
            log(f"removed {n} temporary files left by an interrupted run")
        set_threads(suite.threads)
        ensure_data(suite, log)
        return _rounds(suite, executor, _stop_rule(suite, decide, log), log)


def _rounds(suite: Suite, executor: Executor, decide: Decide | None, log: Log) -> int:
    """Plan, then a round of units at a time until nothing is left to do (or a round changed nothing)."""
    cache = store.fingerprint_cache(suite.output)
    inputs = observe(suite, provision=True, fingerprints=cache)
    p = planning.plan(suite, inputs, snapshot.read(suite.output))
    for line in planning.describe(p):
        log(line)
    store.save_fingerprint_cache(suite.output, cache)
    store.write_index(suite.output, planning.plan_index(p, now_utc()))
    if not live_cells(p) and not p.todo_jobs:
        log("every cell is finished: nothing to evaluate")
    failed: list[str] = []
    stalled = _Stalled()
    rounds = 0
    while True:  # one round: every cell at once, or with eval.stages one stage of the cells still running
        p = _decide(suite, p, inputs, decide, failed, log)
        units = units_of(p, failed, staged_only=rounds > 0)  # unstaged cells: one try a run
        if not units or stalled(live_cells(p, failed)):
            break
        rounds += 1
        failed += executor.run(suite, p, units, log)
        n = store.clean_temp(suite.output)  # what killed attempts left: never a cell
        if n:
            log(f"removed {n} temporary files left by killed attempts")
        if any(u.kind == "finetune" for u in units):  # new checkpoints: their identities, their cells' keys
            inputs = observe(suite, provision=True, fingerprints=cache)
            store.save_fingerprint_cache(suite.output, cache)
        p = planning.plan(suite, inputs, snapshot.read(suite.output))
        store.write_index(suite.output, planning.plan_index(p, now_utc()))
    left = live_cells(p, failed)
    if left:
        log(f"{len(left)} cells are still not finished, e.g. {left[0].label()}; re-run the suite")
    if failed:
        log(f"FAILED: {', '.join(failed)}; the cells of these units were skipped; re-run the suite to retry")
    return 1 if left or failed else 0


class _Stalled:
    """True when a round left the cells still to do as they were (same cells, same items held): then the
    rounds end, and the run reports the unfinished cells instead of evaluating them again and again."""

    def __init__(self):
        self.seen: tuple | None = None

    def __call__(self, todo: list[planning.CellState]) -> bool:
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


def _decide(suite: Suite, p: planning.Plan, inputs: planning.PlanInputs, decide: Decide | None, failed: list[str],
            log: Log) -> planning.Plan:
    """When the running staged cells all hold the same stage (or none is running) and no unstaged cell is
    left, take the stop decision: stop the running cells it names (their records say stopped: decided and its
    reason), and reopen the cells stopped by an earlier decision that it no longer names (evidence that came
    later, a new fine-tune or a model found not to take effect, undid the verdict they stopped for; confidence
    sequences stay valid however often a cell stops and runs on).  Returns the plan, joined with the store
    again when it changed."""
    todo = live_cells(p, failed)
    if decide is None or (todo and not in_step(todo)):
        return p
    records = [store.read_cell(store.cell_path(suite.output, c.key)) for c in p.cells
               if c.key and c.held and not skipped(c, failed)]
    verdict = dict(decide(records))
    known = {c.key for c in p.cells}
    unknown = [k for k in verdict if k not in known]
    if unknown:
        raise SuiteError(f"{suite.path}: the stop decision named cell {str(unknown[0])[:12]}, which is not in the plan")
    running = {c.key: c for c in todo}
    stop = [k for k in verdict if k in running]
    reopen = [c for c in p.cells if c.key and c.stopped == "decided" and c.key not in verdict
              and not skipped(c, failed)]
    for k in stop:
        store.stop_cell(suite.output, k, verdict[k])
        c = running[k]
        log(f"stopped after stage {c.stage} ({c.held} of {c.n} items): {c.label(stage=False)}: {verdict[k]}")
    for c in reopen:
        store.reopen_cell(suite.output, c.key)
        log(f"runs on after {c.held} of {c.n} items: {c.label(stage=False)}: what it stopped for is no longer decided")
    if not stop and not reopen:
        return p
    p = planning.plan(suite, inputs, snapshot.read(suite.output))
    store.write_index(suite.output, planning.plan_index(p, now_utc()))
    return p
