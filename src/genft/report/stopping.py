"""The stop decision of staged evaluation: which running cells need no more items.

`make_decide(settings)` gives the callback `genft suite run` passes to the suite runner
(`decide(records) -> {cell key: reason}`).  It judges every finding part on the records so far, exactly as the
report does, and reads each part's anytime-valid verdict (`anytime`: confidence sequences, valid under this
stopping).  A running staged cell may stop once every part that reads it is decided (holds or does not hold);
a cell that no part reads stops after its first stage (it only fills the tables).  Cells stopped by an earlier
decision are named again while their parts stay decided; the runner reopens those it no longer names.  A part with a comparison
that selects over conditions (best over shots) is never decided early, so its cells run to the end.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping

from ..suite.report_settings import ReportSettings
from ..suite.store import CellRecord
from .findings import FINDINGS
from .judging import DOES_NOT_HOLD, HOLDS, judge_part
from .model import SuiteData


def decisions(records: list[CellRecord], settings: ReportSettings) -> tuple[dict[str, str | None], dict[str, list]]:
    """({part key: anytime verdict when decided, else None}, {cell key: the parts reading it})."""
    s = SuiteData("staged", records, settings=settings)
    decided: dict[str, str | None] = {}
    readers: dict[str, list] = defaultdict(list)
    for fn in FINDINGS:
        f = fn(s)
        for p in f.parts:
            if not p.evidence or any(e.fixed is not None for e in p.evidence):
                continue
            judge_part(p, s)
            key = f"{f.num}{p.name[0]}"
            v = p.anytime
            decided[key] = v if v is not None and v.startswith((HOLDS, DOES_NOT_HOLD)) else None
            for e in p.evidence:
                for cond in (e.comp.conds if e.comp is not None else ()):
                    for r in cond.cells:
                        if key not in readers[r.key]:
                            readers[r.key].append(key)
    return decided, readers


def make_decide(settings: ReportSettings | None = None) -> Callable[[list[CellRecord]], Mapping[str, str]]:
    settings = settings or ReportSettings()

    def decide(records: list[CellRecord]) -> dict[str, str]:
        decided, readers = decisions(records, settings)
        out = {}
        for r in records:
            if r.stages is None or r.stages.stopped not in (None, "decided"):
                continue
            parts = readers.get(r.key, [])
            if all(decided.get(k) for k in parts):
                out[r.key] = "; ".join(f"{k} {decided[k]}" for k in parts) or "read by no finding part"
        return out

    return decide
