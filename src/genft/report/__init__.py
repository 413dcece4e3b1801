"""The suite report: the study's transfer tables, its findings judged against this suite, figures, and the
evidence file that rebuilds it.

One concern a module: `stats` (hierarchical bootstrap, Holm, pooling), `model` (the `CellRecord`s indexed:
groups of true replicates, conditions, comparisons, in-domain checks), `diagnostics` (one-label arms,
identical, repeated, empty and copied outputs), `judging` (the rules that turn comparisons into verdicts),
`findings` (the registry of the study's findings), `sequential` and `anytime` (confidence sequences for staged
evaluation), `stopping` (its stop decision), `power` (the power planner), `compare` (two judgements side by
side), `tables`, `sections` and `curves` (markdown), `figures`, `evidence` (the committed cells file),
`export` and `tracking` (tables and trackers for researchers' tools), `write`.  The settings of the judging
live with the suite schema (`suite.report_settings`).
"""
from __future__ import annotations

from .evidence import read_evidence
from .findings import FINDINGS, findings
from .judging import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_MEASURED
from .model import SuiteData
from ..suite.report_settings import Margin, ReportSettings
from .stats import holm, paired_bootstrap
from .write import build, load, load_settings, write_report

__all__ = ["DOES_NOT_HOLD", "FINDINGS", "HOLDS", "INCONCLUSIVE", "NOT_MEASURED", "Margin", "ReportSettings",
           "SuiteData", "build", "findings", "holm", "load", "load_settings", "paired_bootstrap",
           "read_evidence", "write_report"]
