"""Evaluation results in the researcher's tracker (opt-in): every finished cell's metrics, its change vs the
base model, and the report's findings, logged through the tracker's own library.

Per cell, scalars `eval/<model>/<task>-<dataset>/p<prompt>[/demos-seed<s>]/<metric>` (and `.../change_vs_base`
for a fine-tuned model) at step = shots, so each (model, test set, prompt) is a curve over shots; then the
findings (number, title, verdict, each part's verdict) as text and the cells table (`genft export`'s
columns).  Trackers:

* tensorboard: event files in `log_dir` (`torch.utils.tensorboard.SummaryWriter`, purge_step 0: logging
  again replaces what an earlier logging of the same folder wrote, in TensorBoard's view);
* wandb, mlflow, trackio: a run named `<suite>/evaluation` in the project / experiment `<suite>` (their own
  settings, such as WANDB_MODE=offline, WANDB_DIR, MLFLOW_TRACKING_URI, apply; `log_dir`, when given, is
  wandb's `dir` and mlflow's tracking folder).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..suite.report_settings import TRACKERS, ReportSettings
from ..suite.store import CellRecord
from .export import CELL_COLUMNS, cell_rows, frame, suite_data
from .findings import findings
from .model import SuiteData


class TrackingError(ValueError):
    """A tracker that cannot be used: the message names it and what to do."""


def _tag(row: dict) -> str:
    """The cell's tag; characters other than letters, digits, _ - . / (the "@" of an intermediate model,
    <run>@step<N>) become "." (mlflow accepts no others)."""
    demos = "" if pd.isna(row["demo_seed"]) else f"/demos-seed{int(row['demo_seed'])}"
    return re.sub(r"[^A-Za-z0-9_./-]", ".", f"eval/{row['model']}/{row['task']}-{row['dataset']}/p{row['prompt']}{demos}")


def scalars_by_step(df: pd.DataFrame) -> dict[int, dict[str, float]]:
    """shots -> {tag: value}: each cell's primary metric, and a fine-tuned cell's change vs base."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for row in df.to_dict("records"):
        tag = _tag(row)
        out[int(row["shots"])][f"{tag}/{row['metric']}"] = float(row["score"])
        if not pd.isna(row["change_vs_base"]):
            out[int(row["shots"])][f"{tag}/change_vs_base"] = float(row["change_vs_base"])
    return dict(sorted(out.items()))


def findings_text(s: SuiteData) -> str:
    lines = []
    for f in findings(s):
        lines.append(f"**{f.num}. {f.title}: {f.verdict}**")
        lines += [f"- {p.name}: {p.verdict} ({p.counts})" for p in f.parts]
        lines.append("")
    return "\n".join(lines).strip() + "\n"


class _TensorBoard:
    def __init__(self, name: str, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(log_dir), purge_step=0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def text(self, name: str, text: str) -> None:
        self.w.add_text(name, text, 0)

    def table(self, name: str, df: pd.DataFrame) -> None:
        self.w.add_text(name, df.to_markdown(index=False), 0)

    def close(self) -> None:
        self.w.close()


class _Wandb:
    """wandb, and trackio, whose API is wandb's: init, log (steps ascending), Table, finish."""

    def __init__(self, name: str, log_dir: Path | None, module: str = "wandb"):
        self.lib = __import__(module)
        kw = {"dir": str(log_dir)} if log_dir is not None and module == "wandb" else {}
        self.lib.init(project=name, name=f"{name}/evaluation", **kw)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.lib.log(values, step=step)

    def text(self, name: str, text: str) -> None:
        self.table(name, pd.DataFrame({name: text.splitlines()}))

    def table(self, name: str, df: pd.DataFrame) -> None:
        self.lib.log({name: self.lib.Table(dataframe=df.astype(object).where(df.notna(), None))})

    def close(self) -> None:
        self.lib.finish()


class _MLflow:
    def __init__(self, name: str, log_dir: Path | None):
        import mlflow

        self.lib = mlflow
        if log_dir is not None:
            mlflow.set_tracking_uri(Path(log_dir).resolve().as_uri())
        mlflow.set_experiment(name)
        mlflow.start_run(run_name=f"{name}/evaluation")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.lib.log_metrics(values, step=step)

    def text(self, name: str, text: str) -> None:
        self.lib.log_text(text, f"{name}.md")

    def table(self, name: str, df: pd.DataFrame) -> None:
        self.lib.log_table(df.astype(object).where(df.notna(), None), artifact_file=f"{name}.json")

    def close(self) -> None:
        self.lib.end_run()


def _open(tracker: str, name: str, log_dir: Path | None):
    try:
        if tracker == "tensorboard":
            if log_dir is None:
                raise TrackingError("tensorboard: give the folder for its event files (--log-dir)")
            return _TensorBoard(name, log_dir)
        if tracker in ("wandb", "trackio"):
            return _Wandb(name, log_dir, tracker)
        if tracker == "mlflow":
            return _MLflow(name, log_dir)
    except ImportError as e:
        raise TrackingError(f"--log-to {tracker}: its library is not installed ({e}); `pip install {tracker}`") \
            from None
    raise TrackingError(f"--log-to {tracker!r}: expected one of {', '.join(TRACKERS)}")


def log_results(name: str, records: Iterable[CellRecord], settings: ReportSettings | None, tracker: str,
                log_dir: str | Path | None = None) -> int:
    """Log every cell's metrics, the findings and the cells table to the tracker; returns the cells logged."""
    s, stepped = suite_data(name, records, settings)  # findings: of the final models, as in the report
    df = frame(cell_rows(s, stepped), CELL_COLUMNS)
    text = findings_text(s)
    sink = _open(tracker, name, None if log_dir is None else Path(log_dir))
    try:
        for step, values in scalars_by_step(df).items():
            sink.scalars(values, step)
        sink.text("findings", text)
        sink.table("cells", df)
    finally:
        sink.close()
    return len(df)
