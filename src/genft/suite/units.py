"""Units of work and the executors that run them: "fine-tune one checkpoint" and "evaluate one checkpoint on
its missing cells" (with eval.stages: on the next stage of its cells at the lowest stage).

Every executor has one interface (`Executor.run`: a round's units in, the ids of those that failed for good
out; the store holds what they did).  `LocalExecutor` runs them in this process; the cluster executors
(`cluster`: Ray, Slurm) ship each unit to a worker that calls `run_unit`.  A unit names only the suite file
and a checkpoint: the worker plans the suite afresh from the shared store, so it needs nothing from the
driver's memory, and a retried unit skips what an earlier attempt finished (cells are atomic files: a killed
attempt leaves at most a temporary file).
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Collection, Literal, Sequence

from ..files import fmt_duration
from . import planning, store
from .estimate import Progress
from .execute import CheckpointWork, EvalContext, SubprocessTrainer, Trainer, evaluate_checkpoint, finetune, set_threads
from .observe import read_plan
from .schema import SuiteError
from .spec import Suite, load_suite
from .stages import round_cells, stage_items

Log = Callable[[str], None]


@dataclass(frozen=True)
class Unit:
    kind: Literal["finetune", "evaluate"]
    checkpoint: str  # a fine-tuning run's checkpoint name, or a base model id
    after: str | None = None  # the checkpoint whose fine-tune this unit waits for

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.checkpoint}"

    @property
    def waits_for(self) -> str | None:
        return f"finetune:{self.after}" if self.after else None


def run_of(cell: planning.CellState) -> str:
    """The fine-tuning run a cell's checkpoint comes from (its final or an intermediate model), or its base."""
    return cell.checkpoint.job.run if cell.checkpoint.job is not None else cell.checkpoint.id


def skipped(cell: planning.CellState, failed: Collection[str]) -> bool:
    """A cell of a failed unit: its checkpoint's evaluation, or its run's fine-tune (all its checkpoints)."""
    return f"finetune:{run_of(cell)}" in failed or f"evaluate:{cell.checkpoint.id}" in failed


def live_cells(p: planning.Plan, failed: Collection[str] = ()) -> list[planning.CellState]:
    """The cells still to do, less those of failed units."""
    return [c for c in p.todo_cells if not skipped(c, failed)]


def units_of(p: planning.Plan, failed: Collection[str] = (), staged_only: bool = False) -> list[Unit]:
    """Fine-tunes still to make, then the evaluations still to do (a fine-tuned checkpoint's after its
    fine-tune, when that is among the units; base models' at once); none of a failed unit's work.
    `staged_only`: evaluations of staged cells only (an unstaged cell gets one try a run)."""
    jobs = [j for j in p.todo_jobs if f"finetune:{j.run}" not in failed]
    todo = {j.run for j in jobs}
    units = [Unit("finetune", j.run) for j in jobs]
    cells = [c for c in live_cells(p, failed) if c.staged or not staged_only]
    this_round = {c.checkpoint.id for c in round_cells(cells)}  # staged: the cells at the lowest stage
    for ck in p.checkpoints:
        if ck.id in this_round:
            run = ck.job.run if ck.job is not None else None
            units.append(Unit("evaluate", ck.id, after=run if run in todo else None))
    return units


def this_stage(c: planning.CellState) -> planning.CellState:
    """A staged cell with the time estimate of its next stage (the plan's covers every item left)."""
    if not c.staged or c.n is None or c.n <= c.held:
        return c
    seed, step = c.stages
    part = (stage_items(c.stage + 1, step, c.n) - c.held) / (c.n - c.held)
    return dataclasses.replace(c, est_s=c.est_s * part)


def works_of(cells: Sequence[planning.CellState]) -> list[CheckpointWork]:
    """The cells grouped by checkpoint: one model load each."""
    works: dict[str, CheckpointWork] = {}
    for c in cells:
        works.setdefault(c.checkpoint.id, CheckpointWork(c.checkpoint, [])).cells.append(c)
    return list(works.values())


class Executor(ABC):
    """Runs a round of a suite's units so that the store holds their results (fine-tunes before the
    evaluations that wait for them); returns the ids of the units that failed for good."""

    here: bool = True  # trains and evaluates on this machine (its precision is checked before anything runs)

    @abstractmethod
    def run(self, suite: Suite, p: planning.Plan, units: Sequence[Unit], log: Log) -> list[str]:
        """Do `units` of plan `p`; a failed fine-tune's evaluations are failed too."""


class LocalExecutor(Executor):
    """In this process, in order: the fine-tunes, then every evaluation of the round with one progress
    line per cell and one model load per checkpoint."""

    def __init__(self, trainer: Trainer | None = None):
        self.trainer = trainer

    def run(self, suite: Suite, p: planning.Plan, units: Sequence[Unit], log: Log) -> list[str]:
        failed: list[str] = []
        jobs = {j.run: j for j in p.jobs}
        tune = [u for u in units if u.kind == "finetune"]
        for i, u in enumerate(tune, 1):
            job = jobs[u.checkpoint]
            log(f"fine-tune [{i}/{len(tune)}] {job.run} ({'resuming' if job.status == 'resume' else 'new'}; "
                f"~{fmt_duration(job.est_s)})")
            error = finetune(job, self.trainer or SubprocessTrainer(), log)
            if error:
                log(f"fine-tune {job.run} FAILED: {error}")
                failed.append(u.id)
        failed += [u.id for u in units if u.waits_for in failed]
        wanted = {u.checkpoint for u in units if u.kind == "evaluate" and u.id not in failed}
        if tune:  # the trained weights' identities: their cells' keys
            p = read_plan(suite, provision=True, fingerprints=store.fingerprint_cache(suite.output))
        cells = [this_stage(c) for c in round_cells([c for c in p.todo_cells if c.checkpoint.id in wanted])]
        unknown = [c for c in cells if c.key is None]
        if unknown:
            raise SuiteError(f"{suite.path}: {len(unknown)} cell keys are unknown after provisioning and training "
                             f"(e.g. {unknown[0].label()}): {unknown[0].unknown_key_reason()}")
        for c in cells:
            if c.problem:
                log(f"re-running a cell whose file cannot count: {c.problem}")
        ctx = EvalContext(suite=suite, log=log, progress=Progress(cells, p.ratios, log), device=p.device)
        for work in works_of(cells):
            evaluate_checkpoint(work, ctx)
        return failed


def run_unit(suite_path: str, unit: Unit, *waited_for: object, trainer: Trainer | None = None,
             log: Log = print) -> str:
    """Do one unit on this machine (a Ray worker, a Slurm job): plan, then train or evaluate.  `waited_for`
    are the results of the units it depends on (an executor passes them to order the work); a failed one
    never reaches here.  Raises on failure, so that the executor retries or reports it."""
    suite = load_suite(suite_path)
    set_threads(suite.threads)
    p = read_plan(suite, provision=True, fingerprints=store.fingerprint_cache(suite.output))  # cache: read-only
    if unit.kind == "finetune":
        job = next((j for j in p.jobs if j.run == unit.checkpoint), None)
        if job is None:
            raise RuntimeError(f"{suite.path}: no fine-tuning run {unit.checkpoint!r}")
        if job.status == "done":
            return f"{unit.id}: already finished"
        error = finetune(job, trainer or SubprocessTrainer(), log)
        if error:
            raise RuntimeError(f"{unit.id}: {error}")
        return f"{unit.id}: trained"
    cells = [this_stage(c) for c in round_cells(p.todo_cells) if c.checkpoint.id == unit.checkpoint]
    if not cells:
        return f"{unit.id}: every cell already finished"
    if any(c.key is None for c in cells):
        raise RuntimeError(f"{unit.id}: the checkpoint's cell keys are unknown (not trained, or data missing)")
    ctx = EvalContext(suite=suite, log=log, progress=Progress(cells, p.ratios, log), device=p.device)
    evaluate_checkpoint(CheckpointWork(cells[0].checkpoint, cells), ctx)
    return f"{unit.id}: {len(cells)} cells evaluated"
