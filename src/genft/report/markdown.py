"""Markdown helpers: tables, lists of values, durations."""
from __future__ import annotations

from typing import Any, Iterable

from tabulate import tabulate


def esc(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def table(rows: list, headers: list) -> str:
    """A GitHub markdown table; cells are text (no number re-formatting), pipes escaped."""
    return tabulate([[esc(x) for x in r] for r in rows], headers=[esc(h) for h in headers], tablefmt="github",
                    disable_numparse=True)


def uniq(values: Iterable) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def join(values: Iterable) -> str:
    vals = uniq(values)
    return ", ".join(str(v) for v in vals) if vals else "—"


def many(values: Iterable, most: int = 3) -> str:
    """Like join, but a count instead of a wall of hashes (one harness hash per test set and prompt)."""
    u = uniq(values)
    return join(u) if len(u) <= most else f"{len(u)} distinct (one per task config; each cell's record holds its own)"


def human_s(x: float) -> str:
    x = float(x)
    if x < 120:
        return f"{x:.1f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.2f} h"


def not_measured(lines: list[str], any_table: bool, what: str = "Not measured in this suite.") -> list[str]:
    return lines if any_table else lines + [what, ""]
