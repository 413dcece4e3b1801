"""The cell store: one typed, versioned record per finished evaluation cell, written atomically, read strictly.

Output folder of a suite::

    <output>/plans/<suite>.json         each suite's index: its last plan's cells (key, what, done) and fine-tunes
    <output>/cells/<key>.json           one finished cell: a `CellRecord` (written last, atomically)
    <output>/cells/<key>.samples.jsonl  lm-eval's per-item samples of that cell (written first)
    <output>/checkpoints/<run>/         fine-tuned models, each with genft_manifest.json
    <output>/.suite.lock                one `genft suite run` per output folder at a time

`CellRecord` is the contract between the suite and the report: the report reads nothing else, and a record
that does not validate (a missing or renamed field, items of the wrong length, a key that is not the hash of
its key material) is an error naming the file, never a blank column.  A cell counts as done only when its
record parses, validates, has the key the plan expects and holds every item (`snapshot.judge`); a staged cell
(eval.stages) grows stage by stage, its record rewritten atomically after each, and counts as done with
fewer items only when its record says why it stopped (`StageInfo.stopped`).

Versions: record_version 3 added `stages`; a version-2 record (from before staging: every item at once) is
read as a version-3 record without stages.  The key material's version (`KEY_VERSION`) changes only when
what determines a cell's numbers changes, so stored cells keep their keys across record versions.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..files import Busy, atomic_write, file_key, hold_lock, read_json, read_json_or_none, sha256_json, temp_target, write_json
from ..prompts import get_task
from ..training.manifest import Manifest, ManifestError, read_manifest
from .stages import item_order, stage_items, stop_reason

RECORD_VERSION = 3
READS_VERSIONS = (2, 3)  # 2: before staged evaluation (read as 3 without stages)
KEY_VERSION = 2  # the key material's version: cells keep their keys across record versions


class StoreError(RuntimeError):
    """A record that cannot be used: the message names the file and what is wrong with it."""


def key_of(material: Mapping) -> str:
    """A cell's key: the sha256 of its key material (everything that determines its numbers)."""
    return sha256_json(material)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointInfo(_Record):
    """The model a cell evaluated."""

    id: str = Field(description="the suite's name for it: a base model id or a fine-tuning run (checkpoint) name")
    kind: Literal["base", "finetuned"]
    base: str = Field(description="the base model id it is (or was fine-tuned from)")
    path: str = Field(description="what the backend loaded (a folder or a hub id)")
    identity: dict[str, Any] = Field(description="what identifies its weights; part of the cell's key material")


class FinetuneInfo(_Record):
    """How a fine-tuned checkpoint was made (absent for a base model)."""

    run: str = Field(description="checkpoint name (the run's name, + -seed<s> with several seeds)")
    name: str = Field(description="the fine-tuning run's name in the suite file")
    task: str
    dataset: str
    train_size: int
    train_limit: int | None
    method: Literal["full", "lora"]
    icl_shots: int
    icl_demos: str | None
    seed: int
    num_processes: int
    recipe_hash: str = Field(description="sha256 of every setting that changes the weights, and the data")
    replicate_hash: str = Field(description="recipe_hash without the seed: equal exactly for replicates")
    weights_sha256: str = Field(description="fingerprint of the trained weights (from the manifest)")
    weight_deviation: float | None = Field(description="mean |w - w_base| over all parameters")

    @property
    def effective_size(self) -> int:
        return self.train_limit if self.train_limit is not None and self.train_limit < self.train_size \
            else self.train_size


class Provenance(_Record):
    genft: str | None
    lm_eval: str | None
    torch: str | None
    transformers: str | None
    backend: str
    batch_size: int
    device: str
    dtype: str
    hostname: str
    time: str
    wall_s_shared_by: int = Field(description="cells evaluated in the same lm-eval call (wall_s apportioned)")
    data_sha256: str
    demos_sha256: str | None
    harness_hash: str
    target_delimiter: str


class StageInfo(_Record):
    """A staged cell's progress (eval.stages): the items it holds are the first n of the seeded order."""

    seed: int = Field(description="the seed of the items' order")
    step: int = Field(description="items per stage")
    stage: int = Field(ge=1, description="stages evaluated: the record holds the first min(stage*step, cap) items "
                       "of the order (cap: the test set's items, or the limit when smaller)")
    of: int = Field(ge=1, description="items in the test set (the order's length)")
    stopped: Literal["decided", "exhausted", "limit"] | None = Field(
        description="why no more stages run: decided (the run's stop decision), exhausted (every test item held), "
                    "limit (the cell's limit reached first); None: more stages to run, the cell is not finished")
    why: str | None = Field(None, description="the stop decision's reason (decided only)")


class CellRecord(_Record):
    """One finished evaluation cell: a checkpoint on one test set at one prompt, shot count and demo choice."""

    record_version: Literal[3] = RECORD_VERSION
    key: str
    suite: str
    protocol: Literal["clean", "study"] = Field(description="the data protocol: clean (defective items dropped) or "
                                                "study (the study's exact protocol)")
    checkpoint: CheckpointInfo
    finetune: FinetuneInfo | None
    task: str
    dataset: str
    domain: Literal["in", "out"]
    prompt: int
    shots: int
    limit: int | None
    demo_seed: int | None = Field(description="None: the study's first k demonstrations; else the random seed")
    n: int = Field(description="items scored")
    doc_ids: list[int] = Field(description="the test items scored, in order (item i of every list below)")
    metrics: dict[str, float] = Field(description="lm-eval's aggregate per metric")
    items: dict[str, list[float | None]] = Field(description="per-item values per metric, in doc_ids order")
    outputs: list[str] = Field(description="per item: the predicted label (first-token rule) or the generation")
    demo_targets: list[str] | None = Field(None, description="the targets of the demonstrations every item was "
                                           "given (the study's first k; [] at 0 shots; None for random demos)")
    majority_rate: float | None = Field(description="share of the most frequent gold label (classification)")
    wall_s: float
    provenance: Provenance
    material: dict[str, Any] = Field(description="the key material; key == sha256 of it")
    stages: StageInfo | None = Field(None, description="staged evaluation: the items held of how many, the stage, "
                                     "why it stopped; None: every item (or the first `limit`) at once")
    checksum: str | None = Field(None, description="sha256 of the record's content without this field (what "
                                 "content_sha256 computes): a record edited after it was written fails to load; "
                                 "absent in records written before genft kept it")

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("record_version") == 2:  # before staging: every item at once
            return {**raw, "record_version": RECORD_VERSION, "stages": None}
        return raw

    def content_sha256(self) -> str:
        """The sha256 of everything in the record but its checksum (canonical JSON)."""
        return sha256_json(self.model_dump(mode="json", exclude={"checksum"}))

    def sealed(self) -> "CellRecord":
        """The record with its checksum set (what the store writes)."""
        return self.model_copy(update={"checksum": self.content_sha256()})

    @model_validator(mode="after")
    def _consistent(self) -> "CellRecord":
        if key_of(self.material) != self.key:
            raise ValueError("key is not the sha256 of the record's key material")
        if (self.task, self.dataset, self.protocol) != tuple(self.material.get(k) for k in ("task", "dataset",
                                                                                            "protocol")):
            raise ValueError("task/dataset/protocol differ from the key material")
        if len(self.doc_ids) != self.n or len(self.outputs) != self.n:
            raise ValueError(f"n is {self.n} but doc_ids has {len(self.doc_ids)} and outputs {len(self.outputs)}")
        short = {m: len(v) for m, v in self.items.items() if len(v) != self.n}
        if short:
            raise ValueError(f"items of the wrong length (n={self.n}): {short}")
        if (self.finetune is None) != (self.checkpoint.kind == "base"):
            raise ValueError("finetune must be given exactly for a fine-tuned checkpoint")
        metric = get_task(self.task).primary_metric
        if metric not in self.items or metric not in self.metrics:
            raise ValueError(f"the primary metric {metric!r} of task {self.task} is missing")
        self._check_stages()
        if self.checksum is not None and self.checksum != self.content_sha256():
            raise ValueError("the record's content does not match its checksum: it was edited after genft wrote it; "
                             "delete the file to re-run the cell")
        return self

    def _check_stages(self) -> None:
        st, mat = self.stages, self.material.get("stages")
        if st is None:
            if mat is not None:
                raise ValueError("the key material is staged but the record has no stages")
            return
        if mat != {"seed": st.seed, "step": st.step}:
            raise ValueError(f"stages seed {st.seed} / step {st.step} differ from the key material's {mat}")
        cap = min(st.of, self.limit) if self.limit else st.of
        if self.n != stage_items(st.stage, st.step, cap):
            raise ValueError(f"stage {st.stage} of step {st.step} holds {stage_items(st.stage, st.step, cap)} items, "
                             f"the record {self.n}")
        if self.doc_ids != list(item_order(st.seed, st.of)[:self.n]):
            raise ValueError(f"doc_ids are not the first {self.n} items of the order of seed {st.seed}")
        natural = stop_reason(self.n, st.of, cap)
        if natural is not None and st.stopped != natural:
            raise ValueError(f"it holds {self.n} of {st.of} items (cap {cap}): stopped must be {natural!r}, "
                             f"not {st.stopped!r}")
        if natural is None and st.stopped not in (None, "decided"):
            raise ValueError(f"stopped {st.stopped!r} but it holds {self.n} of {cap} items")
        if st.why is not None and st.stopped != "decided":
            raise ValueError("a stop reason is given but the cell was not stopped by a decision")

    # -- derived, for readers
    @property
    def model(self) -> str:
        return self.checkpoint.id

    @property
    def base(self) -> str:
        return self.checkpoint.base

    @property
    def primary_metric(self) -> str:
        return get_task(self.task).primary_metric

    @property
    def score(self) -> float:
        return self.metrics[self.primary_metric]


# ---------------------------------------------------------------- paths, writing, reading


def cells_dir(output: Path) -> Path:
    return Path(output) / "cells"


def cell_path(output: Path, key: str) -> Path:
    return cells_dir(output) / f"{key}.json"


def samples_path(output: Path, key: str) -> Path:
    return cells_dir(output) / f"{key}.samples.jsonl"


def write_cell(output: Path, record: CellRecord, samples_jsonl: bytes) -> Path:
    """Samples first, then the record: the record's presence (valid) means the cell is complete."""
    atomic_write(samples_path(output, record.key), samples_jsonl)
    path = cell_path(output, record.key)
    write_json(path, (record if record.checksum else record.sealed()).model_dump(mode="json"))
    return path


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(record)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more


_READ: dict[tuple, CellRecord] = {}  # (path, size, mtime) -> record: a plan and the report read each file once


def read_cell(path: Path) -> CellRecord:
    """A cell record, validated; StoreError naming the file and the field otherwise.  Remembered for this
    process by files.file_key, so a file rewritten since is read again."""
    path = Path(path)
    try:
        seen = file_key(path)
    except OSError:
        seen = None
    if seen in _READ:
        return _READ[seen]
    rec = _read_cell(path)
    if seen is not None:
        _READ[seen] = rec
    return rec


def _read_cell(path: Path) -> CellRecord:
    try:
        raw = read_json(path)
    except OSError as e:
        raise StoreError(f"{path}: cannot read the cell record ({e.strerror or e})") from None
    except ValueError as e:
        raise StoreError(f"{e} (a torn or corrupt cell record)") from None
    if isinstance(raw, dict) and raw.get("record_version") not in READS_VERSIONS:
        raise StoreError(f"{path}: record_version {raw.get('record_version')!r}, this genft reads versions "
                         f"{', '.join(map(str, READS_VERSIONS))}; re-run the suite to re-evaluate the cell")
    try:
        return CellRecord.model_validate(raw)
    except ValidationError as e:
        raise StoreError(f"{path}: not a valid cell record: {_explain(e)}") from None


def stop_cell(output: Path, key: str, why: str) -> CellRecord:
    """Mark a staged cell's record as stopped by a decision (rewritten atomically; its items unchanged)."""
    return _set_stop(output, key, None, "not a running staged cell; only those can be stopped", "decided", str(why))


def reopen_cell(output: Path, key: str) -> CellRecord:
    """Let a cell stopped by a decision run on (its parts are no longer decided): the record loses its stop
    reason and keeps its items, and its next stage continues the order where it left off."""
    return _set_stop(output, key, "decided", "not a staged cell stopped by a decision; only those can be reopened",
                     None, None)


def _set_stop(output: Path, key: str, expected: str | None, refusal: str, stopped: str | None,
              why: str | None) -> CellRecord:
    """Rewrite a staged record's stop reason atomically (items unchanged), if it is now `expected`."""
    path = cell_path(output, key)
    rec = read_cell(path)
    if rec.stages is None or rec.stages.stopped != expected:
        raise StoreError(f"{path}: {refusal}")
    raw = rec.model_dump(mode="json", exclude={"checksum"})
    raw["stages"].update(stopped=stopped, why=why)
    new = CellRecord.model_validate(raw).sealed()
    write_json(path, new.model_dump(mode="json"))
    return new


def read_cells(output: Path, keys: Iterable[str]) -> list[CellRecord]:
    """The records of these cells; any file that is missing or does not validate is an error naming it."""
    out = []
    for key in keys:
        path = cell_path(output, key)
        if not path.is_file():
            raise StoreError(f"{path}: the plan lists this cell as done but its record is missing; re-run the suite")
        rec = read_cell(path)
        if rec.key != key:
            raise StoreError(f"{path}: holds the record of cell {rec.key}, not {key}; re-run the suite")
        out.append(rec)
    return out


# ---------------------------------------------------------------- the index (plans/<suite>.json)

LEGACY_INDEX = "plan.json"  # one index per output folder, written by genft before per-suite indexes


def plans_dir(output: Path) -> Path:
    return Path(output) / "plans"


def plan_index_path(output: Path, suite: str) -> Path:
    """A suite's own index in the output folder: suites sharing a folder keep apart which cells are theirs."""
    return plans_dir(output) / f"{suite}.json"


def write_index(output: Path, index: Mapping) -> None:
    write_json(plan_index_path(output, index["suite"]), dict(index))


def _index_of(output: Path, suite: str | None, suite_file: str | None) -> Path:
    if suite is not None:
        path = plan_index_path(output, suite)
        legacy = Path(output) / LEGACY_INDEX
        if not path.is_file() and legacy.is_file() and (read_json_or_none(legacy) or {}).get("suite") == suite:
            return legacy
        if not path.is_file():
            raise StoreError(f"{path}: no plan index of suite {suite}: it has not run in {output} yet "
                             f"(`genft suite run {suite_file or 'SUITE'}`)")
        return path
    found = sorted(plans_dir(output).glob("*.json")) if plans_dir(output).is_dir() else []
    if not found and (Path(output) / LEGACY_INDEX).is_file():
        return Path(output) / LEGACY_INDEX
    if len(found) == 1:
        return found[0]
    if not found:
        raise StoreError(f"{plans_dir(output)}: no plan index: no suite has run in {output} yet (`genft suite run "
                         "SUITE`)")
    raise StoreError(f"{output}: {len(found)} suites share this output folder ({', '.join(p.stem for p in found)}); "
                     "name the one to report by its suite file (`genft report SUITE.yaml`)")


def read_index(output: Path, suite: str | None = None, suite_file: str | None = None) -> dict:
    """A suite's last plan (the only suite's when `suite` is None); StoreError when it has not run here, when
    the index is corrupt, or when the index is of another suite file of the same name."""
    path = _index_of(output, suite, suite_file)
    try:
        idx = read_json(path)
    except ValueError as e:
        raise StoreError(f"{e}; re-run the suite to rewrite it") from None
    if not isinstance(idx, dict) or not isinstance(idx.get("cells"), list):
        raise StoreError(f"{path}: not a plan index (no 'cells' list); re-run the suite to rewrite it")
    if suite_file is not None and idx.get("file") not in (None, str(suite_file)):
        raise StoreError(f"{path}: the index of suite {suite} from {idx.get('file')}, not {suite_file}: two suite "
                         f"files named {suite} share the output folder {output}; give them different names or "
                         "outputs, or re-run this one")
    return idx


def done_keys(index: Mapping) -> list[str]:
    return [c["key"] for c in index["cells"] if c.get("done") and c.get("key")]


def load_finished(output: Path, suite: str | None = None, suite_file: str | None = None
                  ) -> tuple[list[CellRecord], dict]:
    """The records of every cell a suite's last plan marked done (the only suite's in the folder when `suite`
    is None), and the index itself (which also says what is not finished).  Strict: a listed record that is
    missing or invalid is a StoreError naming the file."""
    idx = read_index(output, suite, suite_file)
    return read_cells(output, done_keys(idx)), idx


def load_manifests(output: Path) -> dict[str, Manifest]:
    """run name -> the fine-tuning manifest of each finished checkpoint (one genft cannot read is an error
    naming the file: the checkpoint would otherwise silently lose its training facts)."""
    result = {}
    d = Path(output) / "checkpoints"
    if d.is_dir():
        for folder in sorted(d.iterdir()):
            try:
                man = read_manifest(folder) if folder.is_dir() else None
            except ManifestError as e:
                raise StoreError(f"{e} (or re-run the suite to retrain it)") from None
            if man is not None:
                result[folder.name] = man
    return result


# ---------------------------------------------------------------- the lock and temporary files


class Lock:
    """One suite run per output folder at a time (flock; released by the OS even after kill -9)."""

    def __init__(self, output: Path):
        self.path = Path(output) / ".suite.lock"
        self.f = None

    def __enter__(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.f = hold_lock(self.path)
        except Busy as e:
            raise StoreError(f"{self.path.parent}: another `genft suite run` is using this output folder ({e}); "
                             "wait for it or give this suite another output") from None
        except OSError as e:
            raise StoreError(f"{self.path.parent}: {e.strerror}; a suite needs a locked output folder: put the "
                             "output on a filesystem with flock") from None
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()  # (closing releases the flock)


CELL_FILE = re.compile(r"^[0-9a-f]{64}\.(json|samples\.jsonl)$")
_OWN_TARGETS = {"cells": CELL_FILE, "configs": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.yaml$"),
                "plans": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.json$"),
                "": re.compile(r"^(plan\.json|\.fingerprints\.json)$")}


def clean_temp(output: Path) -> int:
    """Remove the temporary files of genft's own atomic writes left by a killed run (call under the lock, so
    that no writer is active): only a `.<name>.XXXXXXXX.tmp` whose <name> is a file genft writes in that
    folder (a cell, a config, an index); any other file is left alone."""
    n = 0
    output = Path(output)
    for sub, own in _OWN_TARGETS.items():
        d = output / sub if sub else output
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                target = temp_target(p.name)
                if target is not None and own.match(target) and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
                    n += 1
    return n


def fingerprint_cache(output: Path) -> dict:
    return read_json_or_none(Path(output) / ".fingerprints.json") or {}


def save_fingerprint_cache(output: Path, cache: Mapping) -> None:
    write_json(Path(output) / ".fingerprints.json", dict(cache))
