"""The store as the planner sees it: a snapshot of every cell file in an output folder, read once per run step
(`read`), and the pure rule that says whether a stored record counts for a planned cell (`judge`).

A cell counts as done only when its record parses, validates, has the key the plan expects and holds every
item; a staged cell (eval.stages) counts with fewer items when its record says why it stopped, and runs on
otherwise.  Reading is here and in `store`; judging reads nothing, so a plan is a function of the snapshot.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import store
from .store import CellRecord, StoreError


@dataclass(frozen=True)
class StoredCell:
    """One cell file as the store holds it."""

    record: CellRecord | None  # None: the file cannot count (`problem` says why)
    problem: str | None
    samples: bool  # its samples file is there
    sample_lines: int | None = None  # the samples file's lines (staged records only: a stage appends to it)


Snapshot = Mapping[str, StoredCell]  # cell key (the file's name) -> what the file holds
EMPTY: Snapshot = {}


def read_stored(output: Path, key: str) -> StoredCell | None:
    """What the store holds under `key` (None: no record file)."""
    path = store.cell_path(output, key)
    if not path.exists():
        return None
    try:
        rec = store.read_cell(path)
    except StoreError as e:
        return StoredCell(None, str(e), False)
    spath = store.samples_path(output, key)
    lines = spath.read_bytes().count(b"\n") if rec.stages is not None and spath.is_file() else None
    return StoredCell(rec, None, spath.is_file(), lines)


def read(output: Path) -> dict[str, StoredCell]:
    """Every cell file of an output folder (records are remembered per process by `store.read_cell`, so a
    snapshot reads again only the files written since the last one)."""
    folder = store.cells_dir(output)
    if not folder.is_dir():
        return {}
    keys = sorted(p.name[:-len(".json")] for p in folder.iterdir() if store.CELL_FILE.match(p.name)
                  and p.name.endswith(".json"))
    return {k: s for k in keys if (s := read_stored(output, k)) is not None}


def judge(output: Path, key: str, stored: StoredCell | None, n_expected: int | None,
          staged: bool = False) -> tuple[CellRecord | None, str | None]:
    """(record, None) when the cell is done, or for a staged cell when its record is sound (it may hold a
    part of its items: `stages` says how many and whether it stopped); (None, None) when there is no file;
    (None, why) when a file is there but cannot count (torn, corrupt, another key, items missing, no samples
    file).  Reads nothing: `output` only names the files in the reasons."""
    if stored is None:
        return None, None
    path = store.cell_path(output, key)
    rec = stored.record
    if rec is None:
        return None, stored.problem
    if rec.key != key:
        return None, f"{path}: holds the record of cell {rec.key[:12]}, not {key[:12]}"
    if staged:
        if rec.stages is None:
            return None, f"{path}: the cell is staged but its record has no stages"
        cap = min(rec.stages.of, rec.limit) if rec.limit else rec.stages.of
        if n_expected is not None and cap != n_expected:
            return None, f"{path}: its record can hold {cap} items, the cell has {n_expected}"
    elif n_expected is not None and (rec.n != n_expected or rec.doc_ids != list(range(n_expected))):
        return None, f"{path}: holds {rec.n} items, the cell has {n_expected}"
    spath = store.samples_path(output, key)
    if not stored.samples:
        return None, f"{path}: its samples file {spath.name} is missing"
    if staged and (stored.sample_lines or 0) < rec.n:  # a stage appends to it; the record holds n
        return None, f"{path}: its samples file {spath.name} holds fewer than its {rec.n} items"
    return rec, None


def check_cell(output: Path, key: str, n_expected: int | None,
               staged: bool = False) -> tuple[CellRecord | None, str | None]:
    """`judge` of what the store holds under `key` now."""
    return judge(output, key, read_stored(output, key), n_expected, staged)
