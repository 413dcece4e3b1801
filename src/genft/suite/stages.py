"""Staged evaluation (a suite's opt-in `eval.stages`): each cell takes its test items in a seeded, fixed order
and is evaluated stage by stage, so that it can stop once a verdict needs no more of its items.

* The order: a permutation of the test set's N items that depends on the seed and N only (items sorted by
  sha256("<seed>:<doc id>"), so no library version can change it).  Every cell of one test set under one
  seed takes its items in the same order, so two arms of a comparison hold the same first items.
* Stage s holds the first s * step items of the order (at most the cell's cap: N, or eval.limit when smaller).
* A round: every unstaged cell still to do, and every staged cell still running at the lowest stage reached;
  the stop decision is taken only when the running staged cells all hold the same stage (and no unstaged cell
  is left), so a killed and resumed run takes the same decisions as an uninterrupted one.

The stop decision is a callback the caller passes in: `decide(records) -> {cell key: reason}` over the
records of every planned cell evaluated so far; it names the keys that may stop, running or stopped by an
earlier decision (a cell stopped by a decision that it no longer names runs on).  The suite itself never
judges a verdict.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence

Decide = Callable[[list], Mapping[str, str]]  # store.CellRecords -> {cell key: reason}
STOP_REASONS = ("decided", "exhausted", "limit")


@lru_cache(maxsize=64)
def item_order(seed: int, count: int) -> tuple[int, ...]:
    """The test items' fixed order under `seed`: a permutation of range(count)."""
    return tuple(sorted(range(count), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest()))


def stage_items(stage: int, step: int, cap: int) -> int:
    """How many items a cell holds after `stage` stages."""
    return min(stage * step, cap)


def stage_of(held: int, step: int) -> int:
    """The stages a cell holding `held` items has run (its last stage may be short: the cap)."""
    return -(-held // step)


def next_items(seed: int, count: int, held: int, step: int, cap: int) -> list[int]:
    """The doc ids of a cell's next stage, in the order."""
    return list(item_order(seed, count)[held:stage_items(stage_of(held, step) + 1, step, cap)])


def stop_reason(held: int, count: int, cap: int) -> str | None:
    """exhausted (every test item held), limit (eval.limit reached first), or None (more stages to run)."""
    if held >= count:
        return "exhausted"
    return "limit" if held >= cap else None


def round_cells(todo: Sequence) -> list:
    """The cells to evaluate in the next round (planning.Cell: .staged, .stage): the unstaged ones still to
    do, and the staged ones still running at the lowest stage reached (all of them, whatever their test set)."""
    low = min((c.stage for c in todo if c.staged), default=None)
    return [c for c in todo if not c.staged or c.stage == low]


def in_step(todo: Iterable) -> bool:
    """True when a stop decision may be taken: no unstaged cell left, and every running staged cell has run
    at least one stage and the same number of stages."""
    todo = list(todo)
    if not todo or any(not c.staged for c in todo):
        return False
    stages = {c.stage for c in todo}
    return len(stages) == 1 and stages != {0}


def describe(cells: Sequence, step: int, seed: int, stop: str) -> str:
    """The plan's line about staged cells: how many run, at which stages, how many stopped and why."""
    running = [c for c in cells if not c.done and c.held]
    stopped = {r: sum(c.done and c.stopped == r for c in cells) for r in STOP_REASONS}
    at = f" at stage {min(c.stage for c in running)}-{max(c.stage for c in running)}" if running else ""
    return (f"  staged: {step} items a stage in the order of seed {seed}, stop {stop}: {len(running)} cells running"
            f"{at}; stopped: " + ", ".join(f"{k} {v}" for k, v in stopped.items())
            + "; the time estimate assumes every cell runs to the end")
