"""`genft export`: a suite's results as a table for pandas, `datasets.load_dataset`, a spreadsheet or a tracker.

One row per cell (`CELL_COLUMNS`), or with items=True one row per test item of every cell (`ITEM_COLUMNS`),
read from what the report reads (a suite file, its output folder, or an evidence file `cells.jsonl.gz`).  A
fine-tuned cell's change vs the base model and its interval are the report's own comparison
(`SuiteData.compare`: paired over the common test items, bootstrapped with the report settings' resamples
and seed) of that one cell against the base model's cell of the same test set, prompt, shots and
demonstrations.  Written as parquet, csv or jsonl through a temporary file (never a partial file).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..files import atomic_write
from ..metrics import GOLD, metric_label
from ..suite.report_settings import ReportSettings
from ..suite.store import CellRecord
from .model import Cond, Group, SuiteData

FORMATS = ("parquet", "csv", "jsonl")

# column -> (pandas dtype, meaning); the order is the table's
_CHECKPOINT = {
    "suite": ("string", "the suite's name"),
    "key": ("string", "the cell's key: sha256 of everything that determines its numbers (genft.suite.store)"),
    "model": ("string", "the checkpoint: a base model id or a fine-tuned run's checkpoint name"),
    "kind": ("string", "base | finetuned"),
    "base": ("string", "the base model id it is (or was fine-tuned from)"),
    "group": ("string", "the report's label of its model group (replicates of one recipe share it)"),
    "step": ("Int64", "training step of an intermediate checkpoint; empty for a final one or a base model"),
    "weights_sha256": ("string", "fingerprint of the evaluated weights"),
    "recipe_hash": ("string", "fine-tuned: sha256 of every setting that changes the weights, and the data"),
    "replicate_hash": ("string", "fine-tuned: recipe_hash without the seed (equal for replicates)"),
    "identity": ("string", "the checkpoint's identity in the cell key, as JSON"),
    "ft_task": ("string", "fine-tuned: the task it was trained on"),
    "ft_dataset": ("string", "fine-tuned: the data set it was trained on"),
    "train_size": ("Int64", "fine-tuned: training examples used"),
    "method": ("string", "fine-tuned: full | lora"),
    "icl_shots": ("Int64", "fine-tuned: demonstrations in each training prompt (0: plain FT, k: FTICL)"),
    "seed": ("Int64", "fine-tuned: the training seed"),
}
_CELL = {
    "task": ("string", "the test set's task"),
    "dataset": ("string", "the test set"),
    "domain": ("string", "in | out: the test set's domain relative to its task's training set"),
    "setting": ("string", "base | in-domain | out-of-domain | cross-task (the fine-tuned model's own task or not)"),
    "prompt": ("Int64", "prompt template id"),
    "shots": ("Int64", "in-context demonstrations at evaluation"),
    "demo_seed": ("Int64", "empty: the study's first k demonstrations; else the seed of a random draw"),
}
CELL_COLUMNS: dict[str, tuple[str, str]] = {
    **_CHECKPOINT, **_CELL,
    "metric": ("string", "the task's primary metric (acc_first, acc or rougeL)"),
    "n": ("Int64", "test items scored"),
    "score": ("float64", "the primary metric over the items"),
    "base_score": ("float64", "fine-tuned: the base model's score on the same items, prompt, shots, demos"),
    "change_vs_base": ("float64", "fine-tuned: its group's mean score (over its seeds) - base_score, paired over the "
                                   "items both cells hold (score - base_score for one seed and the same items)"),
    "change_lo": ("float64", "lower end of the change's 95% bootstrap interval (items resampled)"),
    "change_hi": ("float64", "upper end of that interval"),
    "degenerate": ("string", "why the change carries no information (every arm at the floor, or the same "
                             "output on every item); empty otherwise"),
    "backend": ("string", "the lm-eval model type that evaluated it"),
    "device": ("string", "the evaluation device"),
    "dtype": ("string", "the evaluation dtype"),
    "protocol": ("string", "clean | study (the data protocol)"),
    "wall_s": ("float64", "seconds of evaluation (shared calls apportioned)"),
}
ITEM_COLUMNS: dict[str, tuple[str, str]] = {
    "suite": CELL_COLUMNS["suite"], "key": CELL_COLUMNS["key"], "model": CELL_COLUMNS["model"],
    "kind": CELL_COLUMNS["kind"], "base": CELL_COLUMNS["base"], "step": CELL_COLUMNS["step"],
    "seed": CELL_COLUMNS["seed"], **_CELL,
    "doc_id": ("Int64", "the test item (its index in the test file)"),
    "metric": CELL_COLUMNS["metric"],
    "value": ("float64", "the item's primary metric"),
    "output": ("string", "the predicted label (first-token rule) or the generated text"),
    "gold": ("string", "classification: the gold label; empty for generation"),
    "acc": ("float64", "classification: 1 when the label with the highest log-likelihood is gold"),
    "acc_first": ("float64", "classification: 1 when the label whose first token is likeliest is gold"),
    "acc_norm": ("float64", "classification: acc with length-normalized log-likelihoods"),
    "rouge1": ("float64", "generation: ROUGE-1 F"),
    "rouge2": ("float64", "generation: ROUGE-2 F"),
    "rougeL": ("float64", "generation: ROUGE-L F"),
}


class ExportError(ValueError):
    """A bad export request: the message names the option and what to do."""


def setting(rec: CellRecord) -> str:
    if rec.finetune is None:
        return "base"
    if rec.task != rec.finetune.task:
        return "cross-task"
    return "in-domain" if rec.domain == "in" else "out-of-domain"


def _checkpoint_columns(rec: CellRecord, group: str | None = None) -> dict:
    ft = rec.finetune
    ident = rec.checkpoint.identity
    weights = ft.weights_sha256 if ft else (ident.get("model") or {}).get("weights")
    return {
        "suite": rec.suite, "key": rec.key, "model": rec.model, "kind": rec.checkpoint.kind, "base": rec.base,
        "group": group, "step": ident.get("step"), "weights_sha256": weights,
        "recipe_hash": ft.recipe_hash if ft else None, "replicate_hash": ft.replicate_hash if ft else None,
        "identity": json.dumps(ident, sort_keys=True, separators=(",", ":")),
        "ft_task": ft.task if ft else None, "ft_dataset": ft.dataset if ft else None,
        "train_size": ft.effective_size if ft else None, "method": ft.method if ft else None,
        "icl_shots": ft.icl_shots if ft else None, "seed": ft.seed if ft else None,
    }


def _cell_columns(rec: CellRecord) -> dict:
    return {"task": rec.task, "dataset": rec.dataset, "domain": rec.domain, "setting": setting(rec),
            "prompt": rec.prompt, "shots": rec.shots, "demo_seed": rec.demo_seed}


def step_of(rec: CellRecord) -> int | None:
    """The optimizer step of an intermediate model's cell (None for a final or base model's)."""
    return rec.checkpoint.identity.get("step")


def split(records: Iterable[CellRecord]) -> tuple[list[CellRecord], list[CellRecord]]:
    """(cells of final and base models, cells of intermediate models): the report's tables and findings read
    the first only.  Anything that is not a CellRecord stays with the first, whose reader rejects it."""
    records = list(records)
    stepped = [r for r in records if isinstance(r, CellRecord) and step_of(r) is not None]
    ids = {id(x) for x in stepped}
    return [r for r in records if id(r) not in ids], stepped


def one_cell(s: SuiteData, rec: CellRecord) -> Cond:
    """A condition of this one cell (one replicate), for the report's comparisons; an intermediate model's
    cell is a group of its own (its run's group holds the final model's cells)."""
    step = step_of(rec)
    group = s.group_of(rec) if step is None else Group(("step", rec.finetune.run, step), rec.base, rec.finetune,
                                                        label=rec.model)
    return Cond(group, rec.task, rec.dataset, rec.domain, rec.prompt, rec.shots, rec.demo_seed, rec.primary_metric,
                [rec])


def vs_base(s: SuiteData, cond: Cond):
    """The report's comparison of a one-cell condition with the base model's matching cell (None for a base
    model's cell, or when the base model has no such cell).  The caller keeps `cond` alive while it uses
    `s` (SuiteData remembers comparisons by the conditions' ids)."""
    rec = cond.cells[0]
    if rec.finetune is None:
        return None
    return s.compare(cond, s.cond(s.base_group(rec.base), (rec.task, rec.dataset), rec.prompt, rec.shots,
                                  rec.demo_seed))


def cell_rows(s: SuiteData, stepped: Iterable[CellRecord] = ()) -> list[dict]:
    """One row per cell of `s` (final and base models), then per cell of intermediate models."""
    cells = list(s.cells) + sorted(stepped, key=lambda r: (r.finetune.run, step_of(r), r.task, r.dataset, r.prompt,
                                                            r.shots, -1 if r.demo_seed is None else r.demo_seed))
    conds = [one_cell(s, rec) for rec in cells]  # alive until the end: see vs_base
    rows = []
    for rec, cond in zip(cells, conds):
        comp = vs_base(s, cond)
        rows.append({
            **_checkpoint_columns(rec, cond.group.label), **_cell_columns(rec),
            "metric": rec.primary_metric, "n": rec.n, "score": rec.score,
            "base_score": comp.b if comp else None, "change_vs_base": comp.diff if comp else None,
            "change_lo": comp.lo if comp else None, "change_hi": comp.hi if comp else None,
            "degenerate": comp.degenerate if comp else None,
            "backend": rec.provenance.backend, "device": rec.provenance.device, "dtype": rec.provenance.dtype,
            "protocol": rec.protocol, "wall_s": rec.wall_s,
        })
    return rows


def _gold(rec: CellRecord, i: int) -> str | None:
    return next((lab for m, v in rec.items.items() if (lab := metric_label(GOLD, m)) is not None and v[i]), None)


def item_rows(records: Iterable[CellRecord]) -> list[dict]:
    metrics = [c for c in ITEM_COLUMNS if c in ("acc", "acc_first", "acc_norm", "rouge1", "rouge2", "rougeL")]
    rows = []
    for rec in records:
        head = {k: v for k, v in _checkpoint_columns(rec).items() if k in ITEM_COLUMNS}
        head.update(_cell_columns(rec), metric=rec.primary_metric)
        values = rec.items[rec.primary_metric]
        for i, doc in enumerate(rec.doc_ids):
            rows.append({**head, "doc_id": doc, "value": values[i], "output": rec.outputs[i], "gold": _gold(rec, i),
                         **{m: rec.items[m][i] if m in rec.items else None for m in metrics}})
    return rows


def frame(rows: list[dict], columns: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """The rows as a DataFrame with exactly the documented columns, in order, with their dtypes."""
    df = pd.DataFrame(rows, columns=list(columns))
    return df.astype({c: t for c, (t, _) in columns.items()})


def table_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, engine="pyarrow")
        return buf.getvalue()
    if fmt == "csv":
        return df.to_csv(index=False).encode("utf-8")
    if fmt == "jsonl":
        return df.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def suite_data(name: str, records: Iterable[CellRecord], settings: ReportSettings | None
               ) -> tuple[SuiteData, list[CellRecord]]:
    """The report's view of the final and base models' cells, and the intermediate models' cells."""
    main, stepped = split(records)
    return SuiteData(name, main, None, settings), stepped


def tables(name: str, records: list[CellRecord], settings: ReportSettings | None, items: bool) -> pd.DataFrame:
    s, stepped = suite_data(name, records, settings)
    if items:
        return frame(item_rows(list(s.cells) + stepped), ITEM_COLUMNS)
    return frame(cell_rows(s, stepped), CELL_COLUMNS)


def export(name: str, records: list[CellRecord], settings: ReportSettings | None, fmt: str, items: bool,
           output: str | os.PathLike | None = None) -> Path:
    """Write the cells (or items) table; returns its path (default `<suite>-cells.<fmt>` / `-items`)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not records:
        raise ExportError(f"{name}: no finished evaluation cells to export")
    path = Path(output) if output else Path(f"{name}-{'items' if items else 'cells'}.{fmt}")
    if path.is_dir():
        raise ExportError(f"--output {path}: is a folder; give a file name")
    atomic_write(path, table_bytes(tables(name, list(records), settings, items), fmt))
    return path
