"""The one canonical on-disk layout, validation on every load, atomic writes, and the evaluation protocol.

Layout (every source writes it, every consumer reads it)::

    DATA_DIR/<task>/<dataset>/test.jsonl          the test set, in source order
    DATA_DIR/<task>/<dataset>/demos.jsonl         the demonstration pool, in source order (first-k = the study's demos)
    DATA_DIR/<task>/<dataset>/train_<N>.jsonl     training sets by size (only for training data sets)
    DATA_DIR/<task>/<dataset>/meta.json           source, protocol, per-file item counts and sha256

One JSON object a line, with the task's canonical fields (prompts.TaskSpec.fields), all non-empty strings;
classification labels are the task's label words.  DATA_DIR: --data-dir, else $GENFT_DATA_DIR, else ./data.

Protocols (`meta.json` "protocol"; a property of the whole data folder, see `check_protocol`):
  clean  (default) defective items (gold "-", an empty text) are dropped at import and counted;
  study  the study's exact evaluation data: defective items are kept (and accepted on load), the test set is
         cut to the items the study's code scores (its first 250).  See genft.data.protocol.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from ..files import folder_lock, sha256_file
from ..prompts import TaskSpec, get_task
from .registry import DataError, data_command, get_dataset

CLEAN, STUDY = "clean", "study"
PROTOCOLS = (CLEAN, STUDY)
UNLABELED = "-"  # MNLI's gold label for items with no annotator consensus

# ---------------------------------------------------------------- paths


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("GENFT_DATA_DIR") or "data").expanduser().resolve()


def dataset_dir(task: str, name: str, root: str | os.PathLike | None = None) -> Path:
    return data_dir(root) / task / name


# ---------------------------------------------------------------- validation


def check_protocol_name(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return protocol


def is_defective(spec: TaskSpec, item: Mapping) -> bool:
    """An item the study released but that cannot be scored or learned from: gold "-" or an empty text."""
    return (spec.is_classification and item.get(spec.target) == UNLABELED) or any(
        isinstance(item.get(f), str) and not item[f].strip() for f in spec.fields)


def validate_item(spec: TaskSpec, item: object, where: str, protocol: str = CLEAN) -> dict:
    """Check one item against the task's schema; `where` names file and line for the message.

    Under the study protocol a defective item (gold "-", an empty text) is accepted: the study scored it."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    for field in spec.fields:
        if field not in item:
            raise DataError(f"{where}: missing field {field!r} (a {spec.name} item needs {', '.join(spec.fields)})")
        value = item[field]
        if not isinstance(value, str):
            raise DataError(f"{where}: field {field!r} must be a string, got {value!r}")
    if protocol == STUDY and is_defective(spec, item):
        return item
    for field in spec.fields:
        if not item[field].strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string, got {item[field]!r}")
    if spec.is_classification and item[spec.target] not in spec.labels:
        raise DataError(
            f"{where}: unknown label {item[spec.target]!r} for task {spec.name!r}: expected one of {', '.join(spec.labels)}"
        )
    return item


def read_jsonl(path: Path, spec: TaskSpec, protocol: str = CLEAN) -> list[dict]:
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
            items.append(validate_item(spec, obj, f"{path}:{lineno}", protocol))
    if not items:
        raise DataError(f"{path}: the file holds no items")
    return items


def load_split(task: str, name: str, split: str, root: str | os.PathLike | None = None) -> list[dict]:
    """Load and validate one split ("test", "demos", "train_<N>") of a data set (under its meta's protocol)."""
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
    return read_jsonl(path, get_task(task), read_protocol(task, name, root))


def train_sizes(task: str, name: str, root: str | os.PathLike | None = None) -> list[int]:
    folder = dataset_dir(task, name, root)
    return sorted(int(p.stem.split("_", 1)[1]) for p in folder.glob("train_*.jsonl"))


file_sha256 = sha256_file  # the content hash recorded in meta.json


def read_meta(task: str, name: str, root: str | os.PathLike | None = None) -> dict:
    path = dataset_dir(task, name, root) / "meta.json"
    if not path.is_file():
        info = get_dataset(task, name)
        raise DataError(f"{path}: missing; re-create the data set with `{data_command(info)}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}); re-create the data set") from None


def read_protocol(task: str, name: str, root: str | os.PathLike | None = None) -> str:
    """The protocol a data set was written under ("clean" or "study"); "clean" for a folder without meta.json
    and for data written before protocols existed."""
    path = dataset_dir(task, name, root) / "meta.json"
    if not path.is_file():
        return CLEAN
    return check_protocol_name(read_meta(task, name, root).get("protocol", CLEAN))


def data_protocols(root: str | os.PathLike | None = None) -> dict[str, str]:
    """{task/dataset: protocol} of every data set in the data folder."""
    base = data_dir(root)
    out = {}
    for meta in sorted(base.glob("*/*/meta.json")):
        try:
            out[f"{meta.parent.parent.name}/{meta.parent.name}"] = json.loads(meta.read_text()).get("protocol", CLEAN)
        except (OSError, json.JSONDecodeError):
            continue
    return out


def check_protocol(root: str | os.PathLike | None, protocol: str) -> None:
    """A data folder holds one protocol: writing `protocol` data into a folder that holds the other is an error."""
    check_protocol_name(protocol)
    other = {k: p for k, p in data_protocols(root).items() if p != protocol}
    if other:
        name, theirs = next(iter(other.items()))
        raise DataError(
            f"{data_dir(root)} holds {theirs}-protocol data ({name}, and {len(other) - 1} more); a data folder holds "
            f"one protocol: write the {protocol}-protocol data into another folder (--data-dir data-{protocol}) "
            f"or delete those data sets first")


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
    protocol = check_protocol_name((meta or {}).get("protocol", CLEAN))
    check_protocol(root, protocol)
    final = dataset_dir(task, name, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        files = {}
        for split, items in splits.items():
            items = [{f: it[f] for f in spec.fields} for it in items]
            for i, it in enumerate(items):
                validate_item(spec, it, f"{task}/{name}/{split} item {i}", protocol)
            if not items:
                raise DataError(f"{task}/{name}/{split}: no items to write")
            path = tmp / f"{split}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for it in items:
                    f.write(json.dumps(it, ensure_ascii=False) + "\n")
            files[split] = {"count": len(items), "sha256": file_sha256(path)}
        info = {"task": task, "dataset": name, "protocol": protocol, **(meta or {}), "files": files}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        with folder_lock(final.parent):  # writers of one task folder swap their data set folders in turn
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
