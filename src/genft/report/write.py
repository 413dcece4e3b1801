"""Build the report in memory, then write it: `<out_dir>/<suite>.md`, its figures and its evidence file
`<out_dir>/<suite>/cells.jsonl.gz`, each through a temporary file and `os.replace`, the markdown last, so a
failure leaves the previous report untouched and no partial file behind."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..files import atomic_write
from ..suite import load_suite
from ..suite import store
from ..suite.schema import parse
from ..suite.store import CellRecord
from . import curves, figures, sections, tables
from ..training.manifest import Manifest, training_facts
from .evidence import FILE_NAME, evidence_bytes, read_evidence
from .findings import findings
from .model import TASK_ORDER, SuiteData
from ..suite.report_settings import ReportSettings


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-") or "suite"


def build(name: str, records: Iterable[CellRecord], facts: Mapping[str, Mapping] | None = None,
          settings: ReportSettings | None = None, figures_: bool = True) -> tuple[str, dict[str, bytes]]:
    """The markdown text and the figures ({file name: PNG bytes}); nothing written (figures_=False: text only).
    facts: run -> its training facts (genft.training.training_facts of its manifest)."""
    facts = dict(facts or {})
    records, stepped = curves.split(records)  # intermediate models: their own section
    s = SuiteData(name, records, facts, settings)
    fig_dir = slug(name)
    figs: dict[str, bytes] = {}
    multi = len(s.bases) > 1

    def add(fname: str, make: Callable[[], bytes | None]) -> str | None:
        data = make() if figures_ else None
        if data is None:
            return None
        figs[fname] = data
        return f"{fig_dir}/{fname}"

    heat, shots, sizes = [], [], []
    for base in s.bases:
        pre = f"{slug(base)}-" if multi else ""
        heat.append(add(f"{pre}heatmap-p1-0shot.png", lambda b=base: figures.figure_heatmap(s, b)))
        for task in TASK_ORDER:
            shots.append(add(f"{pre}shots-{task}.png", lambda b=base, t=task: figures.figure_shots(s, b, t)))
        sizes.append(add(f"{pre}train-size.png", lambda b=base: figures.figure_train_size(s, b)))

    lines = sections.section_header(s)
    lines += sections.section_findings(s, findings(s))
    lines += ["## Transfer matrix", ""]
    lines += [f"![transfer matrix]({h})" for h in heat if h] or [
        "Not measured in this suite (no 0-shot Prompt-1 cells of a fine-tuned model with a matching base cell)."
        if figures_ else "Figures not rendered."]
    lines += [""]
    lines += tables.section_same_task(s, "in")
    lines += tables.section_same_task(s, "out")
    lines += tables.section_cross_task(s)
    lines += tables.section_fticl(s)
    lines += tables.section_seeds(s)
    lines += tables.section_best_over_shots(s)
    lines += tables.section_train_size(s, next((x for x in sizes if x), None))
    lines += sections.section_weights(s)
    lines += sections.section_labels(s)
    lines += sections.section_generations(s)
    lines += ["## Shot curves", "",
              "Score vs shots, Prompt-1: the base model (dashed) and the models fine-tuned on the task.", ""]
    lines += [f"![shot curves]({x})" for x in shots if x] or [
        "Not measured in this suite (one shot count only)." if figures_ else "Figures not rendered."]
    lines += [""]
    lines += curves.section(s, stepped, facts, add)
    lines += sections.section_appendix(s)
    lines += ["## Evidence", "",
              f"Every cell record this report read is in `{fig_dir}/{FILE_NAME}` (JSON lines, gzip; the first line "
              f"holds the report settings and the training facts of each run). `genft report --cells "
              f"{fig_dir}/{FILE_NAME}` rebuilds this report from it, byte for byte, without running any model.", ""]
    return "\n".join(lines).rstrip() + "\n", figs


def load_settings(ref: str | os.PathLike) -> ReportSettings:
    """Report settings by reference: `defaults` (genft's), or a suite file's `report:` block (validated like
    the whole suite file; errors name file:line)."""
    if str(ref) == "defaults":
        return ReportSettings()
    return parse(Path(ref))[0].report


def _facts(output: Path) -> dict[str, dict]:
    return {run: training_facts(m) for run, m in store.load_manifests(output).items()}


def load(source: str | os.PathLike) -> tuple[str, list[CellRecord], dict, ReportSettings | None]:
    """(suite name, records, training facts per run, settings) from an evidence file (`*.jsonl.gz`), a suite's
    output folder, or a suite file (its output folder is `load_suite(path).output`, its settings the suite's
    `report:` block)."""
    p = Path(source)
    if p.name.endswith(".jsonl.gz"):
        return read_evidence(p)
    if not p.is_dir():  # a suite file: its own index in its output folder, never another suite's there
        suite = load_suite(p)
        records, _ = store.load_finished(suite.output, suite.name, str(suite.path))
        return suite.name, records, _facts(suite.output), suite.report
    records, idx = store.load_finished(p)
    return idx.get("suite") or _name_of(p, records), records, _facts(p), None


def _name_of(source: str | os.PathLike, records: list[CellRecord]) -> str:
    names = sorted({r.suite for r in records})
    if len(names) == 1:
        return names[0]
    p = Path(str(source))
    return p.stem if p.suffix in (".json", ".yaml", ".yml", ".toml") else p.name


def write_report(source: str | os.PathLike, cells: Iterable[CellRecord] | None = None,
                 manifests: Mapping[str, Manifest] | None = None, out_dir: str | os.PathLike = "reports",
                 settings: ReportSettings | None = None) -> Path:
    """Write `<out_dir>/<suite>.md`, its figures and its evidence file; returns the markdown path.

    With cells None the records are read from `source`: an evidence file (`--cells`), a suite's output folder
    or a suite file.  Settings: the argument, else those stored in an evidence file, else the defaults."""
    facts = None if manifests is None else {run: training_facts(m) for run, m in manifests.items()}
    if cells is None:
        name, cells, loaded, stored = load(source)
        facts = loaded if facts is None else facts
        settings = settings or stored
    else:
        cells = list(cells)
        name = _name_of(source, cells)
    cells = list(cells)
    if not cells:
        raise FileNotFoundError(f"{source}: no finished evaluation cells to report")
    settings = settings or ReportSettings()
    text, figs = build(name, cells, facts, settings)
    evidence = evidence_bytes(name, cells, facts or {}, settings)
    out = Path(out_dir)
    for fname, data in sorted(figs.items()):
        atomic_write(out / slug(name) / fname, data)
    atomic_write(out / slug(name) / FILE_NAME, evidence)
    md = out / f"{slug(name)}.md"
    atomic_write(md, text.encode("utf-8"))
    return md
