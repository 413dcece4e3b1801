"""A small release in the study's format, made by the tests: the same files as the study's release (every path
of genft's sums file, prompt_map.json included), a sums file for it, and GitHub-style archives, so that the
import's checks and the study protocol are tested on any clone.

The items are short seeded sentences.  Test files hold more than the 250 items the study scores (GPT3-NLI's
fewer), and the release's kinds of defective items are where the real release has them: gold "-" in both
MultiNLI test files (one of MNLI-m's after item 250), empty texts in TweetQA and GPT3-NLI, one empty XSum
training document.  prompt_map.json is written from genft's own prompt templates in the release's JSON layout:
its bytes equal the released file exactly when genft's prompts equal the study's (its sha256 is in the sums
genft ships)."""
from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from genft import data
from genft.data import study
from genft.prompts import TASKS, get_task, render_prompt

TOP = f"Generalization_of_FT-LLM-{data.STUDY_COMMIT}"  # GitHub's archive: one top-level folder, then data/
TEST_ITEMS = 256
SHORT_TEST = {"gptnli": 240}  # fewer than the 250 the study scores
CNNDM_TEST = 262
TRAIN_ITEMS = {2000: 6, 4000: 8, 6000: 10}  # nested prefixes, as in the release
POOL = {"generation": 4, "classification": 8}
# (data set, split) -> {item index: what is wrong with it}
DEFECTS = {("mnli_m", "test"): {3: "gold -", 100: "gold -", 251: "gold -"},
           ("mnli_mm", "test"): {7: "gold -"},
           ("tweetqa", "test"): {5: "empty input", 9: "empty output"},
           ("gptnli", "test"): {2: "empty input_1"},
           ("xsum", "train"): {4: "empty input"}}  # in train_2000, and so in the larger sets
WORDS = ("the a small old new red quiet busy city river market teacher child dog phone film song road garden "
         "storm team game book window morning night friend story price meal trip rain sun letter office "
         "walks opens sells finds loses wins reads builds moves closes watches carries likes helps "
         "slowly today again early late near over under after before with without").split()


def sentence(rng: random.Random, lo: int = 6, hi: int = 16) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def _item(spec, rng: random.Random, i: int) -> dict:
    """A study-format item (the release's JSON keys)."""
    item = {key: sentence(rng, 12, 30) if key == "input" else sentence(rng) for key in spec.study_fields}
    item["output"] = spec.labels[i % len(spec.labels)] if spec.is_classification else sentence(rng, 4, 10)
    return item


def _defective(spec, item: dict, what: str) -> dict:
    if what == "gold -":
        return {**item, "output": "-"}
    return {**item, what.split()[1]: ""}


_STUDY_ORDER = ["summary", "question", "sentiment", "inference", "detection"]  # prompt_map.json's key order


def prompt_map_bytes() -> bytes:
    """prompt_map.json as the study released it (a list of two dicts keyed by the study's task folders, 4-space
    JSON, no final newline), written from genft's prompt templates."""
    prompts = []
    for prompt in (1, 2):
        prompts.append({spec.study_name: render_prompt(spec.name, {canon: "{" + key + "}" for key, canon in
                                                                   spec.study_fields.items() if key != "output"},
                                                       prompt)
                        for spec in sorted(TASKS.values(), key=lambda s: _STUDY_ORDER.index(s.study_name))})
    return json.dumps(prompts, indent=4).encode()


@dataclass(frozen=True)
class Release:
    """A made release: `data` (the data/ folder), `sums` (a sums file in genft's format for it) and archives in
    `archives`: release.tar.gz, release.zip, tampered.tar.gz (one label changed in RTE's test file),
    missing.tar.gz (SNLI's test file left out)."""

    data: Path
    sums: Path
    archives: Path

    def files(self) -> dict[str, bytes]:
        return {p.relative_to(self.data).as_posix(): p.read_bytes()
                for p in sorted(self.data.rglob("*")) if p.is_file()}


# test items that are also in their own demonstration pool, two of the real release's nine: (test, demo)
TEST_IN_DEMOS = {"mnli_m": [(18, 0)], "paws": [(248, 2)]}


def write_release(folder: Path) -> Path:
    """The release's data/ folder under `folder`; returns it."""
    rng = random.Random(24)
    out = folder / "data"
    for info in data.STUDY_DATASETS.values():
        spec = get_task(info.task)
        base = out / spec.study_name
        n_test = CNNDM_TEST if info.name == "cnndm" else SHORT_TEST.get(info.name, TEST_ITEMS)
        splits = {"test": [_item(spec, rng, i) for i in range(n_test)],
                  "demos": [_item(spec, rng, i) for i in range(POOL[spec.kind])]}
        if info.trains:
            splits["train"] = [_item(spec, rng, i) for i in range(max(TRAIN_ITEMS.values()))]
        for t, d in TEST_IN_DEMOS.get(info.name, ()):  # as in the real release: a scored test item is a demo
            splits["test"][t] = dict(splits["demos"][d])
        for split, items in splits.items():
            bad = DEFECTS.get((info.name, split), {})
            splits[split] = [_defective(spec, it, bad[i]) if i in bad else it for i, it in enumerate(items)]
        files = {f"{info.study_file}_test_500.json": splits["test"],
                 f"few_shot/{info.study_file}_few_shot.json": splits["demos"]}
        for size, n in TRAIN_ITEMS.items() if info.trains else ():
            files[f"{info.study_file}_train_{size}.json"] = splits["train"][:n]
        for rel, items in files.items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_text(json.dumps(items, indent=1, ensure_ascii=False), encoding="utf-8")
    # SNLI's test file is in the release (and its sums) though the study's tables do not use it
    snli = [_item(get_task("nli"), rng, i) for i in range(TEST_ITEMS)]
    (out / "inference" / "snli_test_500.json").write_text(json.dumps(snli, indent=1), encoding="utf-8")
    (out / "prompt_map.json").write_bytes(prompt_map_bytes())
    return out


def write_sums(release: Path, path: Path) -> Path:
    """A sums file in genft's format (study_release.json) for a release folder: the same paths as genft's own
    sums, sha256 for the files genft's sums hash, git blob ids for the others."""
    shipped = data.release_sums()
    present = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()}
    assert present == set(shipped["sha256"]) | set(shipped["git_blob_sha1"]), "not the release's layout"
    sums = {k: shipped[k] for k in ("repository", "commit", "folder")}
    sums["sha256"] = {rel: hashlib.sha256((release / rel).read_bytes()).hexdigest() for rel in shipped["sha256"]}
    sums["git_blob_sha1"] = {rel: study.git_blob_sha1(release / rel) for rel in shipped["git_blob_sha1"]}
    path.write_text(json.dumps(sums, indent=1))
    return path


def members(release: Path, edit=lambda name, blob: blob):
    """(archive path, bytes) of a GitHub archive of the release: the repository's files around data/."""
    yield f"{TOP}/README.md", b"# the study's repository\n"
    yield f"{TOP}/evaluate_cross.py", b"print('not imported')\n"
    for path in sorted(p for p in release.rglob("*") if p.is_file()):
        name = f"{TOP}/data/{path.relative_to(release).as_posix()}"
        blob = edit(name, path.read_bytes())
        if blob is not None:
            yield name, blob


def write_tar(path: Path, release: Path, edit=lambda name, blob: blob) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, blob in members(release, edit):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def write_zip(path: Path, release: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, blob in members(release):
            zf.writestr(name, blob)
    return path


def _tamper(name: str, blob: bytes) -> bytes:
    """One label of RTE's test file changed: still valid JSON, still a valid label, another sha256."""
    if not name.endswith("inference/rte_test_500.json"):
        return blob
    items = json.loads(blob)
    items[0]["output"] = "neutral" if items[0]["output"] == "entailment" else "entailment"
    return json.dumps(items, indent=1).encode()


def make_release(folder: Path) -> Release:
    release = write_release(folder / "release")
    archives = folder / "archives"
    archives.mkdir()
    write_tar(archives / "release.tar.gz", release)
    write_zip(archives / "release.zip", release)
    write_tar(archives / "tampered.tar.gz", release, _tamper)
    write_tar(archives / "missing.tar.gz", release,
              lambda n, b: None if n.endswith("inference/snli_test_500.json") else b)
    return Release(release, write_sums(release, folder / "sums.json"), archives)
