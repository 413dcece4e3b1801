"""Suites: the whole transfer matrix (fine-tunes x test sets x shots x prompts) from one YAML, resumable.

    genft suite run suites/smoke.yaml [--dry-run]

One concern a module, dependencies pointing one way (schema -> spec -> planning -> execute -> run; store and
estimate beside them):

    schema    the suite file's sections as pydantic models (allowed keys, types, help), error locations
    spec      the file resolved into a frozen Suite, every name checked (no model loaded, no data needed)
    planning  a pure function from a suite and the store's contents to a frozen plan; identities and keys
    estimate  the time model and its calibration
    store     CellRecord (typed, versioned), writing and strict reading of cells, the index, the lock
    stages    staged evaluation: the items' seeded order, stages, rounds and when a stop decision is taken
    execute   the Trainer and Executor seams, one checkpoint's evaluation
    run       run_suite
"""
from .execute import CheckpointWork, EvalContext, Executor, LocalExecutor, SubprocessTrainer, Trainer, evaluate_checkpoint
from .planning import Cell, Checkpoint, FinetuneJob, Plan, describe, plan
from .run import output_of, run_suite
from .schema import SuiteError
from .spec import Suite, load_suite
from .store import CellRecord, StoreError, load_finished, load_manifests

__all__ = ["Cell", "CellRecord", "Checkpoint", "CheckpointWork", "EvalContext", "Executor", "FinetuneJob",
           "LocalExecutor", "Plan", "StoreError", "SubprocessTrainer", "Suite", "SuiteError", "Trainer",
           "describe", "evaluate_checkpoint", "load_finished", "load_manifests", "load_suite", "output_of", "plan",
           "run_suite"]
