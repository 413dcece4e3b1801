"""Import the study's released splits: from a folder, a .zip / .tar.gz archive, an http(s) URL of one, or (no
source) the study's public repository downloaded at a pinned commit.  Every file of the release is checked
against the sha256 sums shipped in genft (study_release.json) before anything is written.

The pinned commit is LHRYANG/Generalization_of_FT-LLM f3718fc8ebbef352441ace9c0b74fe316e9cd349 (short f3718fc,
"Update README.md", 2024-03-14), folder data/.  GitHub's archive of it unpacks into one top-level folder
(Generalization_of_FT-LLM-<commit>/), which is stripped; then data/ is the release.  The archive holds more files
than the sums (code, README): extras are ignored.  The sums cover the 51 release files of the copy genft was
built against; summary/xsum_train_4000.json and xsum_train_6000.json were not in that copy, so they are checked
by their git blob ids (from the commit's tree) when present, and imported as XSum train_4000 / train_6000.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..files import sha256_file
from ..prompts import TaskSpec, get_task
from .layout import CLEAN, STUDY, check_protocol, check_protocol_name, is_defective, validate_item, write_dataset
from .protocol import STUDY_SCORED_ITEMS
from .registry import STUDY_DATASETS, DataError

STUDY_REPOSITORY = "LHRYANG/Generalization_of_FT-LLM"
STUDY_COMMIT = "f3718fc8ebbef352441ace9c0b74fe316e9cd349"  # short hash f3718fc
STUDY_ARCHIVE_URL = f"https://codeload.github.com/{STUDY_REPOSITORY}/tar.gz/{STUDY_COMMIT}"
DOWNLOAD_TIMEOUT_S = 60  # one read
DOWNLOAD_DEADLINE_S = 1800  # the whole download
MAX_DOWNLOAD_BYTES = 1 << 30
MAX_UNPACKED_BYTES = 1 << 30  # an archive's members together
MAX_RATIO = 100  # unpacked / archive bytes, beyond RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 64 << 20
MAX_MEMBERS = 20_000
_SUMS_FILE = Path(__file__).with_name("study_release.json")


@lru_cache(maxsize=1)
def release_sums() -> dict:
    """The shipped sums: {"sha256": {path: hex}, "git_blob_sha1": {path: hex}} over paths inside data/."""
    return json.loads(_SUMS_FILE.read_text())


def git_blob_sha1(path: Path) -> str:
    """The id git gives a file's content (sha1 of "blob <size>\\0" + content)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_release(folder: Path, origin: str) -> int:
    """Check every file of the release against the shipped sums; returns how many files were checked."""
    sums = release_sums()
    missing = [rel for rel in sums["sha256"] if not (folder / rel).is_file()]
    if missing:
        raise DataError(f"{origin}: {missing[0]} is missing (and {len(missing) - 1} more files of the study's "
                        f"release at {STUDY_COMMIT[:7]}); nothing was imported. Pass the whole release "
                        f"(the repository's archive, or its data/ folder)")
    checked = 0
    for kind, expected_sums, digest in (("sha256", sums["sha256"], sha256_file),
                                        ("git blob sha1", sums["git_blob_sha1"], git_blob_sha1)):
        for rel, expected in expected_sums.items():
            path = folder / rel
            if not path.is_file():
                continue  # only the git-blob files are optional; missing sha256 files were reported above
            got = digest(path)
            if got != expected:
                raise DataError(f"{origin}: {rel} does not match the study's release at {STUDY_COMMIT[:7]} "
                                f"({kind} {got}, expected {expected}); nothing was imported. Re-download the "
                                f"release, or pass --no-verify to import a modified copy on purpose")
            checked += 1
    return checked


# ---------------------------------------------------------------- sources: URL, archive, folder


def _download(url: str, dest: Path, log: Callable) -> None:
    """Download `url` into `dest`, bounded: each read waits at most DOWNLOAD_TIMEOUT_S, the whole download
    DOWNLOAD_DEADLINE_S (a server that drip-feeds bytes cannot hold it forever), at most MAX_DOWNLOAD_BYTES,
    and exactly the Content-Length the server announced (a connection cut early is an error, not an archive)."""
    log(f"downloading {url}")
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as f:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            if expected is not None and expected > MAX_DOWNLOAD_BYTES:
                raise DataError(f"{url}: the server announces {expected} bytes, more than the {MAX_DOWNLOAD_BYTES} "
                                "genft downloads for the study's release; refusing it")
            got = 0
            while True:
                if time.monotonic() > deadline:
                    raise DataError(f"{url}: the download took longer than {DOWNLOAD_DEADLINE_S} s ({got} bytes "
                                    "so far); refusing it. Download the archive another way and pass the file")
                chunk = resp.read1(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
                if got > MAX_DOWNLOAD_BYTES:
                    raise DataError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes; refusing it")
                f.write(chunk)
            if expected is not None and got != expected:
                raise DataError(f"{url}: the download was cut short ({got} of the {expected} bytes the server "
                                "announced); nothing was imported. Run the command again, or download the archive "
                                "another way and pass the file")
    except DataError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(
            f"could not download {url} ({reason}). On a machine with internet, download it with a browser or "
            f"`curl -L -o study-release.tar.gz {url}`, copy the file here and run "
            f"`genft data import-study path/to/study-release.tar.gz` (or unpack it and pass its data/ folder)"
        ) from None


def _safe_zip_names(zf: zipfile.ZipFile, archive: Path) -> None:
    for name in zf.namelist():
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(f"{archive}: member {name!r} would be written outside the folder; refusing the archive")


def unpack_limit(archive_bytes: int) -> int:
    """The most an archive of this size may unpack to: MAX_UNPACKED_BYTES, and no more than MAX_RATIO times its
    size once that exceeds RATIO_FLOOR_BYTES (a zip bomb expands a thousandfold; text archives ~10x)."""
    return min(MAX_UNPACKED_BYTES, max(RATIO_FLOOR_BYTES, MAX_RATIO * archive_bytes))


def _too_big(origin: str, what: str, limit: int, archive_bytes: int) -> DataError:
    return DataError(f"{origin}: the archive {what}, more than the {limit} bytes genft unpacks from a "
                     f"{archive_bytes}-byte archive (at most {MAX_UNPACKED_BYTES} bytes, {MAX_RATIO} times the "
                     "archive's size); refusing it (the study's release unpacks to about 25 MB)")


def _extract(archive: Path, dest: Path, origin: str) -> None:
    """Unpack a .zip or .tar[.gz|.bz2|.xz] (recognized by content), bounded in size (unpack_limit) and in members
    (MAX_MEMBERS); members that leave `dest` are an error."""
    size = archive.stat().st_size
    limit = unpack_limit(size)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _safe_zip_names(zf, archive)
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise DataError(f"{origin}: {len(infos)} members, more than the {MAX_MEMBERS} genft unpacks; refusing it")
            total = sum(i.file_size for i in infos)  # (zipfile never reads a member past its declared size)
            if total > limit:
                raise _too_big(origin, f"unpacks to {total} bytes", limit, size)
            zf.extractall(dest)
        return

    def bounded(tf: tarfile.TarFile):
        total = members = 0
        for m in tf:
            total, members = total + max(m.size, 0), members + 1
            if total > limit:
                raise _too_big(origin, f"unpacks to more than {total} bytes", limit, size)
            if members > MAX_MEMBERS:
                raise DataError(f"{origin}: more than {MAX_MEMBERS} members; refusing it")
            yield m

    try:
        with tarfile.open(archive, "r|*") as tf:  # a stream: members are checked as they come, never all unpacked first
            tf.extractall(dest, members=bounded(tf), filter="data")
    except tarfile.FilterError as e:
        raise DataError(f"{origin}: member {e.tarinfo.name!r} rejected ({e}); refusing the archive") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{origin}: not a readable .zip or .tar.gz archive ({e})") from None


def release_folder(folder: Path, strip_top: bool = True) -> Path:
    """The release's data/ folder inside an unpacked archive or a clone: strips an archive's single top-level
    folder (strip_top), then descends into data/ when it is there."""
    entries = list(folder.iterdir())
    if strip_top and len(entries) == 1 and entries[0].is_dir():
        folder = entries[0]
    if (folder / "data").is_dir() and not (folder / "summary").is_dir():
        folder = folder / "data"
    return folder


def _resolve_source(src, work: Path, verify: bool | None, log: Callable) -> tuple[Path, str, bool]:
    """(the release's data/ folder, where it came from, whether to check the sums)."""
    if src is None:
        src = STUDY_ARCHIVE_URL
        verify = True  # the pinned download is always checked
    src = str(src)
    if src.startswith(("http://", "https://")):
        archive = work / "download"
        _download(src, archive, log)
        origin = src
    else:
        path = Path(src).expanduser().resolve()
        if path.is_dir():
            return release_folder(path, strip_top=False), str(path), bool(verify)
        if not path.is_file():
            raise DataError(f"{path}: no such folder or archive; pass the study's released data/ folder, its "
                            f"repository's .zip / .tar.gz archive, an http(s) URL of one, or nothing (downloads "
                            f"{STUDY_ARCHIVE_URL})")
        archive, origin = path, str(path)
    unpacked = work / "unpacked"
    unpacked.mkdir()
    _extract(archive, unpacked, origin)
    return release_folder(unpacked), origin, verify is None or verify


# ---------------------------------------------------------------- reading the release


def _read_study_file(path: Path, spec: TaskSpec, protocol: str) -> tuple[list[dict], int]:
    """Read one released JSON array, map its keys to canonical fields.  Returns (items, defective items): under
    the clean protocol defective items are dropped, under the study protocol they are kept (and counted)."""
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
    items, defective = [], 0
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
        # one XSum training document).  The clean protocol drops them (they cannot be scored or learned from);
        # the study protocol keeps them, as the study scored them.
        if is_defective(spec, item):
            defective += 1
            if protocol == CLEAN:
                continue
        items.append(validate_item(spec, item, where, protocol))
    return items, defective


def _read_release(src: Path, protocol: str) -> list[tuple]:
    plans = []
    for info in STUDY_DATASETS.values():
        spec = get_task(info.task)
        folder = src / spec.study_name
        files = {"test": folder / f"{info.study_file}_test_500.json",
                 "demos": folder / "few_shot" / f"{info.study_file}_few_shot.json"}
        if info.trains:
            trains = sorted(folder.glob(f"{info.study_file}_train_*.json"))
            if not trains:
                raise DataError(f"{folder}: no {info.study_file}_train_<N>.json file for the training set")
            files.update({f"train_{p.stem.rsplit('_', 1)[1]}": p for p in trains})
        splits, defective = {}, {}
        for split, path in files.items():
            splits[split], defective[split] = _read_study_file(path, spec, protocol)
        cut = {}
        if protocol == STUDY:
            # The study's code scores the first 250 items of every test file (CNN/DM's file holds 382).
            cut = {"test": {"released": len(splits["test"]), "kept": min(STUDY_SCORED_ITEMS, len(splits["test"]))}}
            splits["test"] = splits["test"][:STUDY_SCORED_ITEMS]
            defective["test"] = sum(is_defective(spec, it) for it in splits["test"])
        plans.append((info, splits, defective, cut, test_in_demos(splits["test"], splits["demos"])))
    return plans


def test_in_demos(test: list[dict], demos: list[dict]) -> list[dict]:
    """Test items that are also in the data set's own demonstration pool (the release has a few, e.g. MNLI-m's
    test item 18 is demonstration 0): [{"test": i, "demo": j}], positions in the written files."""
    where = {json.dumps(d, sort_keys=True): j for j, d in reversed(list(enumerate(demos)))}
    return [{"test": i, "demo": where[k]} for i, t in enumerate(test) if (k := json.dumps(t, sort_keys=True)) in where]


def import_study(src: str | os.PathLike | None = None, root: str | os.PathLike | None = None, log=print,
                 protocol: str = CLEAN, verify: bool | None = None) -> dict:
    """Import the study's released splits into the canonical layout.  Returns {task/dataset: meta}.

    src: a folder (the release's data/ folder or a clone), a .zip / .tar.gz archive, an http(s) URL of one, or
    None (downloads the pinned commit).  verify: check the shipped sums (default: yes for downloads and archives,
    no for a folder).  protocol: "clean" (drop defective items) or "study" (the study's first 250 test items,
    defective items kept).  Everything is read and checked before anything is written."""
    check_protocol_name(protocol)
    check_protocol(root, protocol)
    with tempfile.TemporaryDirectory(prefix="genft-study-") as work:
        folder, origin, verify = _resolve_source(src, Path(work), verify, log)
        checked = verify_release(folder, origin) if verify else 0
        plans = _read_release(folder, protocol)
    release = {"repository": STUDY_REPOSITORY, "commit": STUDY_COMMIT if verify else "unknown (not verified)",
               "verified_files": checked}
    results = {}
    for info, splits, defective, cut, overlap in plans:
        meta = {
            "source": "study",
            "protocol": protocol,
            "source_folder": origin,
            "release": release,
            "domain": info.domain,
            "description": info.description,
            ("dropped_defective" if protocol == CLEAN else "kept_defective"): {k: v for k, v in defective.items() if v},
        }
        if cut:
            meta["study_cut"] = cut
        if overlap:
            meta["test_in_demos"] = overlap  # scored as usual, in both protocols: the study scored them too
        results[f"{info.task}/{info.name}"] = written = write_dataset(info.task, info.name, splits, root, meta)
        counts = ", ".join(f"{k} {v['count']}" for k, v in written["files"].items())
        verb = "dropped" if protocol == CLEAN else "kept"
        note = "".join(f"; {verb} {v} defective items (gold '-' or an empty text) in {k}"
                       for k, v in defective.items() if v)
        if overlap:
            note += (f"; {len(overlap)} test items also in the demonstration pool (test/demo "
                     f"{', '.join(str(o['test']) + '/' + str(o['demo']) for o in overlap)})")
        log(f"{info.task}/{info.name}: {counts}{note}")
    if verify:
        log(f"checked {checked} files against the study's release at {STUDY_COMMIT[:7]}")
    return results
