"""Units of work for engines that run elsewhere (Ray, Slurm): "fine-tune one checkpoint" and "evaluate one
checkpoint on its missing cells" (with eval.stages: on the next stage of its cells at the lowest stage).  A unit names only the suite file and a checkpoint; the worker plans the
suite afresh from the shared store, so it needs nothing from the driver's memory, and a retried unit skips
what an earlier attempt finished (cells are atomic files: a killed attempt leaves at most a temporary file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Literal

from . import planning, store
from .estimate import Progress
from .execute import CheckpointWork, EvalContext, SubprocessTrainer, Trainer, evaluate_checkpoint, finetune
from .spec import load_suite
from .stages import round_cells

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


def units_of(p: planning.Plan) -> list[Unit]:
    """Fine-tunes still to make, then the evaluations still to do (a fine-tuned checkpoint's after its
    fine-tune, when that is among the units; base models' at once)."""
    todo = {j.run for j in p.todo_jobs}
    units = [Unit("finetune", j.run) for j in p.todo_jobs]
    this_round = {c.checkpoint.id for c in round_cells(p.todo_cells)}  # staged: the cells at the lowest stage
    for ck in p.checkpoints:
        if ck.id in this_round:
            run = ck.job.run if ck.job is not None else None
            units.append(Unit("evaluate", ck.id, after=run if run in todo else None))
    return units


def run_unit(suite_path: str, unit: Unit, *waited_for: object, trainer: Trainer | None = None,
             log: Log = print) -> str:
    """Do one unit on this machine (a Ray worker, a Slurm job): plan, then train or evaluate.  `waited_for`
    are the results of the units it depends on (an engine passes them to order the work); a failed one
    never reaches here.  Raises on failure, so that the engine retries or reports it."""
    suite = load_suite(suite_path)
    if suite.threads:
        os.environ["OMP_NUM_THREADS"] = str(suite.threads)
        import torch

        torch.set_num_threads(suite.threads)
    p = planning.plan(suite, provision=True, fingerprints=store.fingerprint_cache(suite.output))  # read-only here
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
    cells = [c for c in round_cells(p.todo_cells) if c.checkpoint.id == unit.checkpoint]
    if not cells:
        return f"{unit.id}: every cell already finished"
    if any(c.key is None for c in cells):
        raise RuntimeError(f"{unit.id}: the checkpoint's cell keys are unknown (not trained, or data missing)")
    ctx = EvalContext(suite=suite, log=log, progress=Progress(cells, p.ratios, log), device=p.device)
    evaluate_checkpoint(CheckpointWork(cells[0].checkpoint, cells), ctx)
    return f"{unit.id}: {len(cells)} cells evaluated"
