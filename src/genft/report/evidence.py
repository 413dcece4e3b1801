"""The evidence file committed beside a report: every cell record the report read, as JSON lines, gzip.

    line 1     {"genft_evidence": 1, "suite": NAME, "settings": {...}, "runs": {run: training facts}}
               (training facts: genft.training.training_facts of each run's manifest)
    line 2...  one `CellRecord` per line (genft.suite.store), sorted by key

Written byte-deterministically (sorted keys, gzip with mtime 0 and no file name), read strictly: every record
is validated by `CellRecord.model_validate`, and an error names the file and the line.  `genft report --cells
FILE` rebuilds the same report from it without the suite's output folder, data or models.
"""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Iterable, Mapping

from pydantic import ValidationError

from ..suite.store import CellRecord, StoreError
from ..suite.report_settings import ReportSettings

EVIDENCE_VERSION = 1
FILE_NAME = "cells.jsonl.gz"


def evidence_bytes(name: str, records: Iterable[CellRecord], facts: Mapping[str, Mapping],
                   settings: ReportSettings) -> bytes:
    """The evidence file's bytes; facts: run -> its training facts (`training_facts`)."""
    records = {r.key: r for r in records}
    runs = sorted({r.finetune.run for r in records.values() if r.finetune})
    header = {"genft_evidence": EVIDENCE_VERSION, "suite": name, "settings": settings.model_dump(mode="json"),
              "runs": {run: dict(facts[run]) for run in runs if run in facts}}
    lines = [json.dumps(header, sort_keys=True, ensure_ascii=False, separators=(",", ":"))]
    lines += [json.dumps(records[k].model_dump(mode="json", exclude=None if records[k].checksum else {"checksum"}),
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))  # (older records: as they were)
              for k in sorted(records)]
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    return buf.getvalue()


def _explain(e: ValidationError) -> str:
    err = e.errors()[0]
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{'.'.join(str(x) for x in err['loc']) or '(record)'}: {err['msg']}{more}"


def read_evidence(path: str | Path) -> tuple[str, list[CellRecord], dict[str, dict], ReportSettings]:
    """(suite name, records, training facts per run, settings) from an evidence file; StoreError naming
    file:line for anything that does not validate."""
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: cannot read the evidence file ({e})") from None
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise StoreError(f"{path}:{i}: not JSON ({e})") from None
    if not rows or not isinstance(rows[0], dict) or rows[0].get("genft_evidence") != EVIDENCE_VERSION:
        raise StoreError(f"{path}:1: not a genft evidence file of version {EVIDENCE_VERSION}")
    head = rows[0]
    try:
        settings = ReportSettings.model_validate(head.get("settings", {}))
    except ValidationError as e:
        raise StoreError(f"{path}:1: invalid report settings: {_explain(e)}") from None
    records = []
    for i, raw in enumerate(rows[1:], 2):
        try:
            records.append(CellRecord.model_validate(raw))
        except ValidationError as e:
            raise StoreError(f"{path}:{i}: not a valid cell record: {_explain(e)}") from None
    if not records:
        raise StoreError(f"{path}: holds no cell records")
    return str(head.get("suite")), records, dict(head.get("runs") or {}), settings
