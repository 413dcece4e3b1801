"""Two judgements of the study's findings side by side: which finding parts changed verdict, and why.

A side is an evidence file (`*.jsonl.gz`, judged now, under its stored settings or the ones given) or a report
markdown (`*.md`, read as it was written: its findings' part lines `- <part>: **<verdict>** (<evidence>)`), so
a report written under earlier rules can be set beside the same evidence judged under today's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..suite.report_settings import ReportSettings
from ..suite.store import StoreError
from .evidence import read_evidence
from .findings import findings
from .markdown import table
from .model import SuiteData

_FINDING = re.compile(r"^### (\d+)\. (.+?): ((?:holds|does not hold|inconclusive|not measured in this suite)(?: \(.*\))?)$")
_PART = re.compile(r"^- (?P<name>.+?): \*\*(?P<verdict>[^*]+)\*\* \((?P<counts>.*)\)$")


@dataclass(frozen=True)
class PartVerdict:
    finding: int
    title: str
    part: str  # "a: ..." (the part's letter and claim)
    verdict: str
    counts: str

    @property
    def key(self) -> tuple[int, str]:
        return self.finding, self.part.split(":")[0]


def from_markdown(path: Path) -> list[PartVerdict]:
    """The part lines of a report's findings section."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: cannot read the report ({e})") from None
    out, current = [], None
    for line in lines:
        if line.startswith("## ") and current is not None and not line.startswith("## Findings"):
            break
        m = _FINDING.match(line)
        if m:
            current = (int(m.group(1)), m.group(2))
            continue
        p = _PART.match(line)
        if p and current is not None:
            out.append(PartVerdict(current[0], current[1], p.group("name"), p.group("verdict"), p.group("counts")))
    if not out:
        raise StoreError(f"{path}: no findings section with part lines ('- a: ...: **verdict** (...)') found")
    return out


def from_evidence(path: Path, settings: ReportSettings | None = None) -> list[PartVerdict]:
    name, records, runs, stored = read_evidence(path)
    s = SuiteData(name, records, runs, settings or stored)
    return [PartVerdict(f.num, f.title, p.name, p.verdict, p.counts) for f in findings(s) for p in f.parts]


def verdicts(source: str | Path, settings: ReportSettings | None = None) -> list[PartVerdict]:
    p = Path(source)
    if p.name.endswith(".jsonl.gz"):
        return from_evidence(p, settings)
    if p.suffix == ".md":
        if settings is not None:
            raise StoreError(f"{p}: a report markdown is read as written; settings apply to evidence files only")
        return from_markdown(p)
    raise StoreError(f"{p}: compare reads evidence files (*.jsonl.gz) and report markdown (*.md)")


def _short(v: str) -> str:
    return v.split(" (")[0]


def compare(old: list[PartVerdict], new: list[PartVerdict], everything: bool = False) -> str:
    """A markdown table of the parts whose verdict changed (every part with `everything`), each with the
    evidence behind both verdicts."""
    before = {v.key: v for v in old}
    after = {v.key: v for v in new}
    rows, changed = [], 0
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        same = a is not None and b is not None and a.verdict == b.verdict
        changed += not same
        if same and not everything:
            continue
        ref = b or a
        rows.append([f"{key[0]}{key[1]}", f"{ref.title}: {ref.part.split(':', 1)[-1].strip()}",
                     a.verdict if a else "— (not in this judgement)", b.verdict if b else "— (not in this judgement)",
                     "same" if same else ("changed" if _short(a.verdict if a else "") != _short(b.verdict if b else "")
                                          else "same verdict, other reason"),
                     a.counts if a else "—", b.counts if b else "—"])
    head = f"{changed} of {len(set(before) | set(after))} finding parts changed verdict."
    if not rows:
        return head + "\n"
    return head + "\n\n" + table(rows, ["part", "claim", "before", "after", "", "evidence before",
                                        "evidence after"]) + "\n"
