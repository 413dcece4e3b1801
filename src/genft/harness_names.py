"""The names lm-eval knows genft's work by -- the backends genft runs, the harness_tasks folder, a task's name
there -- importable without lm-eval or torch (the suite's schema and planner, and the report, need the names
only; `genft.harness` runs them)."""
from __future__ import annotations

import os
from pathlib import Path

from .prompts import TASKS, TaskSpec, task_name  # noqa: F401 (re-exported: the one rule lives in prompts)

BACKENDS = ("genft-hf", "hf", "vllm")  # lm-eval model types genft runs; genft-hf is the suites' default


def tasks_dir() -> Path:
    env = os.environ.get("GENFT_TASKS_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "harness_tasks"
    if not (path / "_genft_classification.yaml").is_file():
        raise FileNotFoundError(f"{path}: genft's harness_tasks folder not found; set GENFT_TASKS_DIR to it")
    return path


def task_spec(name: str) -> TaskSpec:
    """The genft task of a harness task name (genft_<task>_<dataset>[_p2])."""
    rest = name.removeprefix("genft_")
    for task, spec in TASKS.items():
        if rest.startswith(task + "_"):
            return spec
    raise KeyError(f"{name!r} is not a genft task name (genft_<task>_<dataset>[_p2])")
