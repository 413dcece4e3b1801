"""Data sets: the registry, the one canonical on-disk layout, validation on every load, and the study import.

Layout (every source writes it, every consumer reads it)::

    DATA_DIR/<task>/<dataset>/test.jsonl          the test set, in source order
    DATA_DIR/<task>/<dataset>/demos.jsonl         the demonstration pool, in source order (first-k = the study's demos)
    DATA_DIR/<task>/<dataset>/train_<N>.jsonl     training sets by size (only for training data sets)
    DATA_DIR/<task>/<dataset>/meta.json           source, per-file item counts and sha256

One JSON object a line, with the task's canonical fields (prompts.TaskSpec.fields), all non-empty strings;
classification labels are the task's label words.  DATA_DIR: --data-dir, else $GENFT_DATA_DIR, else ./data.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .files import sha256_file
from .prompts import TaskSpec, get_task


class DataError(ValueError):
    """Bad or missing data: the message names the file, the line or item, and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    task: str
    name: str
    domain: str  # "in" (same domain as the task's training set) or "out"
    source: str  # "study" or "builtin"
    study_file: str = ""  # file stem in the study's release (study sets only)
    trains: bool = False  # the task's training data set
    description: str = ""


def _study(task, name, domain, study_file, trains=False, description=""):
    return DatasetInfo(task, name, domain, "study", study_file, trains, description)


STUDY_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        _study("summary", "xsum", "in", "xsum", True, "XSum, BBC news, one-sentence summaries"),
        _study("summary", "xlsum", "in", "xlsum", False, "XLSum (English), BBC news"),
        _study("summary", "peerread", "out", "pdfs", False, "PeerRead, paper abstract -> title"),
        _study("summary", "cnndm", "out", "cnn", False, "CNN/DailyMail, multi-sentence highlights"),
        _study("question", "socialiqa", "in", "socialqa", True, "SocialIQA, context + answer -> question"),
        _study("question", "tweetqa", "out", "tweetqa", False, "TweetQA"),
        _study("question", "sciq", "out", "sciqa", False, "SciQ"),
        _study("sentiment", "amazon", "in", "amazon", True, "Amazon product reviews"),
        _study("sentiment", "amazonfood", "in", "amazonfood", False, "Amazon fine food reviews"),
        _study("sentiment", "sst2", "out", "sst2", False, "SST-2 movie review sentences"),
        _study("sentiment", "yelp", "out", "yelp", False, "Yelp reviews"),
        _study("paraphrase", "paws", "in", "paws", True, "PAWS (Wikipedia)"),
        _study("paraphrase", "qqp", "out", "qqp", False, "Quora question pairs"),
        _study("paraphrase", "stsb", "out", "stsb", False, "STS-B, score > 3.5 -> yes"),
        _study("nli", "mnli_m", "in", "multinli", True, "MNLI matched (training set: MNLI train)"),
        _study("nli", "mnli_mm", "in", "multinli2", False, "MNLI mismatched"),
        _study("nli", "rte", "out", "rte", False, "RTE, not_entailment -> neutral"),
        _study("nli", "gptnli", "out", "gptnli", False, "GPT3-NLI"),
    ]
}

# Filled by builtin.py (imported below) so that the registry is complete wherever data is imported.
BUILTIN_DATASETS: dict[str, DatasetInfo] = {}


def all_datasets() -> dict[str, DatasetInfo]:
    return {**STUDY_DATASETS, **BUILTIN_DATASETS}


def get_dataset(task: str, name: str) -> DatasetInfo:
    get_task(task)
    info = all_datasets().get(name)
    if info is None or info.task != task:
        known = sorted(n for n, d in all_datasets().items() if d.task == task)
        raise DataError(f"unknown data set {name!r} for task {task!r}: expected one of {', '.join(known)}")
    return info


def datasets_for(task: str, source: str | None = None) -> list[DatasetInfo]:
    return [d for d in all_datasets().values() if d.task == task and (source is None or d.source == source)]


def train_dataset(task: str, source: str = "study") -> DatasetInfo:
    return next(d for d in datasets_for(task, source) if d.trains)


def data_command(info: DatasetInfo) -> str:
    """The genft command that creates a data set, for error messages."""
    if info.source == "builtin":
        return "genft data builtin"
    return "genft data import-study ../shared/paper-data  (the study's released data/ folder)"


# ---------------------------------------------------------------- paths


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("GENFT_DATA_DIR") or "data").expanduser().resolve()


def dataset_dir(task: str, name: str, root: str | os.PathLike | None = None) -> Path:
    return data_dir(root) / task / name


# ---------------------------------------------------------------- validation


def validate_item(spec: TaskSpec, item: object, where: str) -> dict:
    """Check one item against the task's schema; `where` names file and line for the message."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    for field in spec.fields:
        if field not in item:
            raise DataError(f"{where}: missing field {field!r} (a {spec.name} item needs {', '.join(spec.fields)})")
        value = item[field]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
    if spec.is_classification and item[spec.target] not in spec.labels:
        raise DataError(
            f"{where}: unknown label {item[spec.target]!r} for task {spec.name!r}: expected one of {', '.join(spec.labels)}"
        )
    return item


def read_jsonl(path: Path, spec: TaskSpec) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or re-create the file") from None
            items.append(validate_item(spec, obj, f"{path}:{lineno}"))
    if not items:
        raise DataError(f"{path}: the file holds no items")
    return items


def load_split(task: str, name: str, split: str, root: str | os.PathLike | None = None) -> list[dict]:
    """Load and validate one split ("test", "demos", "train_<N>") of a data set."""
    info = get_dataset(task, name)
    folder = dataset_dir(task, name, root)
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        if not folder.is_dir():
            raise DataError(
                f"data set {task}/{name} is not in {data_dir(root)}: create it with `{data_command(info)}` "
                f"(and point GENFT_DATA_DIR or --data-dir at that folder)"
            )
        have = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise DataError(f"{path}: no split {split!r} for {task}/{name}; it has {', '.join(have) or 'none'}")
    return read_jsonl(path, get_task(task))


def train_sizes(task: str, name: str, root: str | os.PathLike | None = None) -> list[int]:
    folder = dataset_dir(task, name, root)
    return sorted(int(p.stem.split("_", 1)[1]) for p in folder.glob("train_*.jsonl"))


file_sha256 = sha256_file  # the content hash recorded in meta.json


def read_meta(task: str, name: str, root: str | os.PathLike | None = None) -> dict:
    path = dataset_dir(task, name, root) / "meta.json"
    if not path.is_file():
        info = get_dataset(task, name)
        raise DataError(f"{path}: missing; re-create the data set with `{data_command(info)}`")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- writing (atomic)


def write_dataset(
    task: str,
    name: str,
    splits: Mapping[str, Iterable[Mapping[str, str]]],
    root: str | os.PathLike | None = None,
    meta: Mapping | None = None,
) -> dict:
    """Validate and write a whole data set folder atomically: a temporary folder, then a rename."""
    spec = get_task(task)
    final = dataset_dir(task, name, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        files = {}
        for split, items in splits.items():
            items = [{f: it[f] for f in spec.fields} for it in items]
            for i, it in enumerate(items):
                validate_item(spec, it, f"{task}/{name}/{split} item {i}")
            if not items:
                raise DataError(f"{task}/{name}/{split}: no items to write")
            path = tmp / f"{split}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for it in items:
                    f.write(json.dumps(it, ensure_ascii=False) + "\n")
            files[split] = {"count": len(items), "sha256": file_sha256(path)}
        info = {"task": task, "dataset": name, **(meta or {}), "files": files}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            old = final.with_name(f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        return info
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- the study's release

UNLABELED = "-"  # MNLI's gold label for items with no annotator consensus


def _read_study_file(path: Path, spec: TaskSpec) -> tuple[list[dict], int]:
    """Read one released JSON array, map its keys to canonical fields; returns (items, dropped defective)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (is the folder the study's released data/?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON array of items, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{path}: the file holds no items")
    items, dropped = [], 0
    for i, obj in enumerate(raw):
        where = f"{path} item {i}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in spec.study_fields if k not in obj]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} (the study's {spec.study_name} items have "
                            f"{', '.join(spec.study_fields)})")
        item = {canon: obj[key] for key, canon in spec.study_fields.items()}
        # The release has a few defective items: gold "-" (MNLI, SNLI) and empty texts (GPT3-NLI, TweetQA,
        # one XSum training document).  They cannot be scored or learned from, so they are dropped and counted.
        if (spec.is_classification and item[spec.target] == UNLABELED) or any(
            isinstance(v, str) and not v.strip() for v in item.values()
        ):
            dropped += 1
            continue
        items.append(validate_item(spec, item, where))
    return items, dropped


def import_study(src: str | os.PathLike, root: str | os.PathLike | None = None, log=print) -> dict:
    """Import the study's released splits into the canonical layout.  Returns {task/dataset: meta}."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise DataError(f"{src}: no such folder; pass the study's released data/ folder (here: ../shared/paper-data)")
    # Read and check everything first, so that a bad file leaves nothing half-written.
    plans = []
    for info in STUDY_DATASETS.values():
        spec = get_task(info.task)
        folder = src / spec.study_name
        splits, dropped = {}, {}
        splits["test"], dropped["test"] = _read_study_file(folder / f"{info.study_file}_test_500.json", spec)
        splits["demos"], dropped["demos"] = _read_study_file(folder / "few_shot" / f"{info.study_file}_few_shot.json", spec)
        if info.trains:
            trains = sorted(folder.glob(f"{info.study_file}_train_*.json"))
            if not trains:
                raise DataError(f"{folder}: no {info.study_file}_train_<N>.json file for the training set")
            for path in trains:
                nominal = path.stem.rsplit("_", 1)[1]
                splits[f"train_{nominal}"], dropped[f"train_{nominal}"] = _read_study_file(path, spec)
        plans.append((info, splits, dropped))
    results = {}
    for info, splits, dropped in plans:
        meta = {
            "source": "study",
            "source_folder": str(src),
            "domain": info.domain,
            "description": info.description,
            "dropped_defective": {k: v for k, v in dropped.items() if v},
        }
        results[f"{info.task}/{info.name}"] = written = write_dataset(info.task, info.name, splits, root, meta)
        counts = ", ".join(f"{k} {v['count']}" for k, v in written["files"].items())
        note = "".join(f"; dropped {v} defective items (gold '-' or an empty text) from {k}"
                       for k, v in dropped.items() if v)
        log(f"{info.task}/{info.name}: {counts}{note}")
    return results


from . import builtin as _builtin  # noqa: E402,F401  (registers BUILTIN_DATASETS)
