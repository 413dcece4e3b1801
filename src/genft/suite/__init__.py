"""Suites: the whole transfer matrix (fine-tunes x test sets x shots x prompts) from one YAML, resumable.

    genft suite run suites/smoke.yaml [--dry-run]

From a suite YAML to a report finding, each module once, in order:

    schema           the file's sections as pydantic models (allowed keys, types, help), error locations;
                     its `report:` block is `report_settings.ReportSettings`
    spec             the file resolved into a frozen Suite, every name checked (no model loaded, no data needed)
    identity         the device, the models' identities and dtypes (may prepare a model when asked to)
    observe          the planner's edge: reads what a plan depends on (data and harness hashes, runs' folders,
                     identities) into `PlanInputs`
    snapshot         the store as the planner sees it: every cell file, and whether one counts for a cell
    planning         a pure function of (Suite, PlanInputs, snapshot) to a frozen Plan: jobs, checkpoints,
                     cells (plan data) each joined with its CellStatus (store data); keys; describe; the index
    estimate         the time model and its calibration
    stages           staged evaluation: the items' seeded order, stages, rounds and when a stop decision is taken
    units            units of work (fine-tune one checkpoint, evaluate one) and the Executor interface; the local
                     executor, and `run_unit` for a worker
    cluster          the Ray and Slurm executors (same interface)
    execute          one fine-tune -- the hand-off to finetune/sft.py (a child process) -- and one checkpoint's
                     evaluation -- the hand-off to lm-eval (through genft.harness) -- each cell written to
    store            CellRecord (typed, versioned), atomic writing and strict reading of cells, the index, the lock
    run              run_suite: plan, rounds of units on the executor, the stop decision between stages
    (genft.report)   reads the CellRecords back (store), judges the findings, writes the report

Dependencies point one way (schema -> spec -> observe/planning -> units -> cluster -> run); the report sits
above the suite and the suite never imports it.  This package's namespace holds the suite's data side only
(schema, spec, planning, store): importing it, as the report does, loads neither torch nor lm-eval.  The
runner is imported from its module (`genft.suite.run.run_suite`).

The report's settings (`report_settings`) live here, not in genft.report: the suite file's `report:` block is
validated with the rest of the file (errors name file:line), so the schema needs their type, and the suite
may not import the report; the report imports them from here.
"""
from .observe import read_plan
from .planning import Cell, CellState, CellStatus, Checkpoint, FinetuneJob, Plan, PlanInputs, describe, plan
from .schema import SuiteError
from .spec import Suite, load_suite, output_of
from .store import CellRecord, StoreError, load_finished, load_manifests

__all__ = ["Cell", "CellRecord", "CellState", "CellStatus", "Checkpoint", "FinetuneJob", "Plan", "PlanInputs",
           "StoreError", "Suite", "SuiteError", "describe", "load_finished", "load_manifests", "load_suite",
           "output_of", "plan", "read_plan"]
