"""The conditions both speed benchmarks run under, set and recorded the same way.

Set: the environment before torch, transformers and lm-eval are imported (offline, no tokenizer threads),
the refusal of --dtype bfloat16 on a CPU without native bf16, and the order of the backends or arms in each
run (rotated, so that none always runs first).  Recorded: the date and machine lines of their reports.
benchmarks/eval_speed.py and benchmarks/finetune_speed.py use them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform

from genft.precision import PrecisionError, check_cpu_bf16


def offline_environment() -> None:
    """No hub or data set downloads and no tokenizer threads, unless the caller's environment says otherwise
    (call it before importing transformers, lm-eval or datasets: they read it at import)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def check_dtype(ap: argparse.ArgumentParser, dtype: str) -> None:
    """With --dtype bfloat16, exit through `ap.error` (the reason and what to do) where this CPU has no native
    bf16; float32 always passes."""
    if dtype == "bfloat16":
        try:
            check_cpu_bf16("--dtype bfloat16")
        except PrecisionError as e:
            ap.error(str(e))


def rotated(names: list, rep: int) -> list:
    """`names` in the order of run `rep`: started `rep` places along (wrapping around)."""
    return names[rep % len(names):] + names[: rep % len(names)]


def now_text() -> str:
    """The local date and time, to the minute, as the reports' `date` line gives it."""
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def machine_text() -> str:
    """The machine, as the reports' `machine` line gives it: architecture, CPU count and Python."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"
