"""The suite report: the study's transfer tables, its findings judged against this suite, figures, and the
evidence file that rebuilds it.

One concern a module: `settings` (how findings are judged: margins, tolerances), `stats` (hierarchical
bootstrap, Holm), `model` (the `CellRecord`s indexed: groups of true replicates, conditions, comparisons),
`diagnostics` (one-label arms, identical and repeated outputs), `findings` (the registry of the study's
findings), `tables` and `sections` (markdown), `figures`, `evidence` (the committed cells file), `write`.
"""
from __future__ import annotations

from .evidence import read_evidence
from .findings import DOES_NOT_HOLD, FINDINGS, HOLDS, INCONCLUSIVE, NOT_MEASURED, findings
from .model import SuiteData
from ..suite.report_settings import Margin, ReportSettings
from .stats import holm, paired_bootstrap
from .write import build, load, load_settings, write_report

__all__ = ["DOES_NOT_HOLD", "FINDINGS", "HOLDS", "INCONCLUSIVE", "NOT_MEASURED", "Margin", "ReportSettings",
           "SuiteData", "build", "findings", "holm", "load", "load_settings", "paired_bootstrap",
           "read_evidence", "write_report"]
