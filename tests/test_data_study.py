"""`genft data import-study` from archives and URLs (sha256-checked), offline errors, and the study protocol, on a
small release in the study's format made by the tests (tests/study_release.py, checked against its own sums);
the real release's own sums and content where it is present (GENFT_STUDY_DATA)."""
import contextlib
import functools
import http.server
import io
import json
import shutil
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest
from study_release import CNNDM_TEST, DEFECTS, SHORT_TEST, TEST_ITEMS, TOP, TRAIN_ITEMS

from conftest import STUDY_DATA
from loopback import http_server
from genft import data
from genft.data import DataError, study
from genft.prompts import get_task

needs_release = pytest.mark.skipif(not STUDY_DATA.is_dir(), reason=f"the study's data is not at {STUDY_DATA}")
QUIET = {"log": lambda *_: None}


@pytest.fixture
def archives(release_checked):
    """The made release's archives, checked against the made release's sums."""
    return release_checked.archives


@contextlib.contextmanager
def serve(folder):
    """An HTTP server on 127.0.0.1 for `folder`, in a thread, stopped on exit."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with http_server(functools.partial(Quiet, directory=str(folder))) as url:
        yield url


def _nothing_written(root):
    return not root.exists() or not any(root.rglob("*.jsonl"))


def test_import_from_http_checks_every_sha256(archives, tmp_path, study_format_data):
    root = tmp_path / "data"
    with serve(archives) as url:
        res = data.import_study(f"{url}/release.tar.gz", root, **QUIET)
    assert len(res) == 18
    meta = data.read_meta("nli", "mnli_m", root)
    # 51 files by sha256, and XSum's train_4000 / train_6000 by their git blob ids
    assert meta["release"] == {"repository": "LHRYANG/Generalization_of_FT-LLM", "commit": data.STUDY_COMMIT,
                               "verified_files": 51 + 2}
    assert meta["source_folder"].endswith("/release.tar.gz") and meta["protocol"] == "clean"
    assert data.train_sizes("summary", "xsum", root) == [2000, 4000, 6000]
    # The same data as importing the folder: every file's content hash is equal.
    for info in data.STUDY_DATASETS.values():
        assert data.read_meta(info.task, info.name, root)["files"] == \
            data.read_meta(info.task, info.name, study_format_data)["files"], info.name


def test_clean_import_drops_the_defective_items_and_counts_them(study_format_data):
    """Every defective item of the release (gold "-", an empty text) is dropped and counted per split; the rest
    is kept in the release's order."""
    expected = {}
    for (name, split), bad in DEFECTS.items():
        for s in [f"train_{n}" for n in TRAIN_ITEMS] if split == "train" else [split]:
            n = TRAIN_ITEMS[int(s[6:])] if split == "train" else None
            kept = sum(i < n for i in bad) if n else len(bad)
            if kept:
                expected.setdefault(name, {})[s] = kept
    assert expected["mnli_m"] == {"test": 3} and expected["xsum"] == {"train_2000": 1, "train_4000": 1, "train_6000": 1}
    for info in data.STUDY_DATASETS.values():
        meta = data.read_meta(info.task, info.name, study_format_data)
        assert meta["dropped_defective"] == expected.get(info.name, {}), info.name
        released = CNNDM_TEST if info.name == "cnndm" else SHORT_TEST.get(info.name, TEST_ITEMS)
        test = data.load_split(info.task, info.name, "test", study_format_data)
        assert len(test) == released - expected.get(info.name, {}).get("test", 0), info.name
        assert not any(data.is_defective(get_task(info.task), it) for it in test)
    assert len(data.load_split("summary", "xsum", "train_2000", study_format_data)) == TRAIN_ITEMS[2000] - 1


def test_a_tampered_file_fails_with_its_name_and_writes_nothing(archives, tmp_path):
    root = tmp_path / "data"
    with serve(archives) as url, pytest.raises(DataError, match=r"inference/rte_test_500.json does not match the "
                                                                 r"study's release at f3718fc \(sha256 "):
        data.import_study(f"{url}/tampered.tar.gz", root, **QUIET)
    assert _nothing_written(root)
    # An earlier import in the folder is left as it was.
    data.import_study(archives / "release.tar.gz", root, **QUIET)
    before = data.read_meta("nli", "rte", root)["files"]
    with pytest.raises(DataError, match="rte_test_500.json does not match"):
        data.import_study(archives / "tampered.tar.gz", root, **QUIET)
    assert data.read_meta("nli", "rte", root)["files"] == before


def test_a_missing_file_is_an_error_naming_it(archives, tmp_path):
    with pytest.raises(DataError, match=r"missing.tar.gz: inference/snli_test_500.json is missing \(and 0 more"):
        data.import_study(archives / "missing.tar.gz", tmp_path / "data", **QUIET)
    assert _nothing_written(tmp_path / "data")


def test_zip_archive_and_unpacked_repository_folder(archives, tmp_path):
    res = data.import_study(archives / "release.zip", tmp_path / "z", **QUIET)
    assert len(res) == 18 and data.read_meta("summary", "xsum", tmp_path / "z")["release"]["verified_files"] == 53
    # A clone / unpacked archive: the folder above data/ works too, and --verify checks it.
    clone = tmp_path / "clone"
    with zipfile.ZipFile(archives / "release.zip") as zf:
        zf.extractall(clone)
    data.import_study(clone / TOP, tmp_path / "c", verify=True, **QUIET)
    assert data.read_meta("sentiment", "amazon", tmp_path / "c")["release"]["verified_files"] == 53
    # ... and finds a changed file there too; a folder is not checked unless asked
    rte = clone / TOP / "data" / "inference" / "rte_test_500.json"
    rte.write_text(rte.read_text().replace('"entailment"', '"neutral"', 1))
    with pytest.raises(DataError, match=r"inference/rte_test_500.json does not match"):
        data.import_study(clone / TOP, tmp_path / "d", verify=True, **QUIET)
    assert _nothing_written(tmp_path / "d")
    data.import_study(clone / TOP, tmp_path / "e", **QUIET)
    assert data.read_meta("nli", "rte", tmp_path / "e")["release"]["commit"] == "unknown (not verified)"


def test_archive_members_outside_the_folder_are_refused(tmp_path):
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("top/../../evil.txt", "x")
    with pytest.raises(DataError, match=r"member 'top/../../evil.txt' would be written outside"):
        data.import_study(bad_zip, tmp_path / "data", **QUIET)
    bad_tar = tmp_path / "bad.tar.gz"
    with tarfile.open(bad_tar, "w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match=r"member '../evil.txt' rejected"):
        data.import_study(bad_tar, tmp_path / "data", **QUIET)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    with pytest.raises(DataError, match="not a readable .zip or .tar.gz archive"):
        (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
        data.import_study(tmp_path / "junk.tar.gz", tmp_path / "data", **QUIET)


def test_offline_error_says_what_to_download_and_where(tmp_path, monkeypatch):
    with socket.socket() as closed:  # bound, never listening, held for the test: connecting is refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/LHRYANG/Generalization_of_FT-LLM/tar.gz/{data.STUDY_COMMIT}"
        monkeypatch.setattr(study, "STUDY_ARCHIVE_URL", url)
        with pytest.raises(DataError) as e:
            data.import_study(None, tmp_path / "data", **QUIET)
    msg = str(e.value)
    assert f"could not download {url}" in msg and f"curl -L -o study-release.tar.gz {url}" in msg
    assert "genft data import-study path/to/study-release.tar.gz" in msg
    assert not (tmp_path / "data").exists()


def test_http_404_and_cli_with_url(archives, tmp_path):
    from genft import cli

    with serve(archives) as url:
        with pytest.raises(DataError, match=r"could not download .*/nope.tar.gz \(HTTP 404"):
            data.import_study(f"{url}/nope.tar.gz", tmp_path / "x", **QUIET)
        assert cli.main(["data", "import-study", f"{url}/release.tar.gz", "--data-dir", str(tmp_path / "d")]) == 0
        assert cli.main(["data", "import-study", f"{url}/tampered.tar.gz", "--data-dir", str(tmp_path / "e")]) == 2
    assert len(list((tmp_path / "d").glob("*/*/test.jsonl"))) == 18 and _nothing_written(tmp_path / "e")


def test_no_verify_imports_a_modified_copy_on_purpose(archives, tmp_path):
    data.import_study(archives / "tampered.tar.gz", tmp_path / "data", verify=False, **QUIET)
    assert data.read_meta("nli", "rte", tmp_path / "data")["release"]["commit"] == "unknown (not verified)"


# ---------------------------------------------------------------- the study protocol (faithful mode)


def test_study_protocol_keeps_defective_items_and_the_first_250(tmp_path, archives, study_release):
    root = tmp_path / "study"
    data.import_study(archives / "release.tar.gz", root, protocol="study", **QUIET)
    released = json.loads((study_release.data / "inference" / "multinli_test_500.json").read_text())
    test = data.load_split("nli", "mnli_m", "test", root)
    assert len(test) == 250
    assert [(it["premise"], it["label"]) for it in test] == \
        [(it["input_1"], it["output"]) for it in released[:250]]  # same items, same order
    assert sum(it["label"] == "-" for it in test) == 2  # the third "-" is item 251: cut
    meta = data.read_meta("nli", "mnli_m", root)
    assert meta["protocol"] == "study" and data.read_protocol("nli", "mnli_m", root) == "study"
    assert meta["kept_defective"] == {"test": 2}
    assert meta["study_cut"] == {"test": {"released": TEST_ITEMS, "kept": 250}}
    # The study's code cuts every test file at 250 (CNN/DM's longer file too); a shorter file is whole;
    # demos and training sets are whole.
    assert len(data.load_split("summary", "cnndm", "test", root)) == 250
    assert data.read_meta("summary", "cnndm", root)["study_cut"] == {"test": {"released": CNNDM_TEST, "kept": 250}}
    assert len(data.load_split("nli", "gptnli", "test", root)) == SHORT_TEST["gptnli"]
    tweetqa = data.load_split("question", "tweetqa", "test", root)
    assert [i for i, it in enumerate(tweetqa) if any(not v.strip() for v in it.values())] == [5, 9]  # kept
    assert data.read_meta("question", "tweetqa", root)["kept_defective"] == {"test": 2}
    assert len(data.load_split("sentiment", "amazon", "demos", root)) == 8
    assert len(data.load_split("nli", "mnli_m", "train_6000", root)) == TRAIN_ITEMS[6000]
    xsum = data.load_split("summary", "xsum", "train_2000", root)
    assert len(xsum) == TRAIN_ITEMS[2000] and xsum[4]["document"] == ""  # the empty document is kept
    assert data.data_protocols(root) == {f"{d.task}/{d.name}": "study" for d in data.STUDY_DATASETS.values()}
    # scored test items that are also in their own demonstration pool (the real release has 9, e.g. these two):
    # recorded, and scored as the study did
    overlap = {k: data.read_meta(*k.split("/"), root).get("test_in_demos") for k in data.data_protocols(root)}
    overlap = {k: v for k, v in overlap.items() if v}
    assert overlap == {"nli/mnli_m": [{"test": 18, "demo": 0}], "paraphrase/paws": [{"test": 248, "demo": 2}]}
    for key, pairs in overlap.items():
        task, name = key.split("/")
        test, demos = (data.load_split(task, name, s, root) for s in ("test", "demos"))
        assert all(test[p["test"]] == demos[p["demo"]] for p in pairs)


def test_a_data_folder_holds_one_protocol(tmp_path, study_release, study_format_data):
    root = tmp_path / "study"
    data.import_study(study_release.data, root, protocol="study", **QUIET)
    before = data.read_meta("nli", "mnli_m", root)["files"]
    with pytest.raises(DataError, match=r"holds study-protocol data \(.*\); a data folder holds one protocol"):
        data.import_study(study_release.data, root, **QUIET)
    assert data.read_meta("nli", "mnli_m", root)["files"] == before
    clean_before = data.read_meta("nli", "mnli_m", study_format_data)["files"]
    with pytest.raises(DataError, match=r"holds clean-protocol data"):
        data.import_study(study_release.data, study_format_data, protocol="study", **QUIET)
    assert data.read_meta("nli", "mnli_m", study_format_data)["files"] == clean_before


def test_study_protocol_still_rejects_real_errors(tmp_path):
    root = tmp_path / "data"
    folder = data.dataset_dir("nli", "mnli_m", root)
    data.write_dataset("nli", "mnli_m", {"test": [{"premise": "a", "hypothesis": "b", "label": "-"},
                                                   {"premise": "", "hypothesis": "b", "label": "neutral"}],
                                         "demos": [{"premise": "a", "hypothesis": "b", "label": "neutral"}]},
                       root, {"protocol": "study"})
    assert len(data.load_split("nli", "mnli_m", "test", root)) == 2
    (folder / "test.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:1: unknown label 'maybe'"):
        data.load_split("nli", "mnli_m", "test", root)
    # The same defective item in a clean data set is an error on load.
    clean = tmp_path / "clean"
    with pytest.raises(DataError, match=r"unknown label '-'"):
        data.write_dataset("nli", "mnli_m", {"test": [{"premise": "a", "hypothesis": "b", "label": "-"}]}, clean)


def test_study_prompt_quirks():
    ctx = "### Input:\nfine\n### Sentiment:"
    # 0 shots: the literal "<s> " text; classification adds no special tokens (one BOS, from the text) ...
    assert data.study_prompt_text(ctx, 0, "classification") == ("<s> " + ctx, False)
    # ... generation goes through vLLM, which adds its own BOS (two in all).
    assert data.study_prompt_text(ctx, 0, "generation") == ("<s> " + ctx, True)
    # With demonstrations: no BOS at all for classification, vLLM's one for generation.
    assert data.study_prompt_text(ctx, 2, "classification") == (ctx, False)
    assert data.study_prompt_text(ctx, 2, "generation") == (ctx, True)
    # The clean protocol has no quirk: lm-eval and the tokenizer decide.
    assert data.quirks_for("clean") is None
    assert data.quirks_for("study") == data.STUDY_QUIRKS and data.STUDY_QUIRKS.as_dict() == {
        "zero_shot_prefix": "<s> ", "classification_special_tokens": False, "generation_special_tokens": True}
    with pytest.raises(DataError, match="unknown protocol 'paper'"):
        data.quirks_for("paper")


def test_harness_scores_a_gold_dash_item_wrong(tmp_path, tiny_model):
    """The lm-eval loader gives gold "-" the index -1, which no rule predicts: counted wrong, as the study did."""
    import sys

    from conftest import REPO
    from genft import metrics
    from genft.prompts import get_task

    sys.path.insert(0, str(REPO / "harness_tasks"))
    import utils  # harness_tasks/utils.py

    root = tmp_path / "data"
    item = {"premise": "a", "hypothesis": "b"}
    data.write_dataset("nli", "mnli_m", {"test": [{**item, "label": "-"}, {**item, "label": "neutral"}],
                                         "demos": [{**item, "label": "neutral"}]}, root, {"protocol": "study"})
    docs = utils.load("nli", "mnli_m", genft_data_dir=str(root), pretrained=tiny_model, genft_study_tokens=True)["test"]
    assert [d[utils.GOLD] for d in docs] == [-1, 1]
    for lls in ([0.0, -1, -2, 0.0, -1, -2], [-2, -1, 0.0, -2, -1, 0.0]):
        scores = metrics.classification_scores(get_task("nli"), -1, lls)
        assert scores["acc"] == scores["acc_first"] == 0.0 and not any(scores[f"gold_{lab}"] for lab in
                                                                         get_task("nli").labels)


def test_xsum_4000_and_6000_are_checked_by_their_git_blob_ids(tmp_path, release_checked):
    """The copy genft's sums were computed from lacks XSum train_4000/6000; the pinned commit's tree gives their git
    blob ids, so a release that holds them is checked too (and imports them), and a wrong one is refused; a
    release without them is complete."""
    shipped = json.loads(Path(study.__file__).with_name("study_release.json").read_text())
    assert len(shipped["sha256"]) == 51 and set(shipped["git_blob_sha1"]) == {
        "summary/xsum_train_4000.json", "summary/xsum_train_6000.json"}
    folder = tmp_path / "release"
    shutil.copytree(release_checked.data, folder)
    (folder / "summary" / "xsum_train_4000.json").write_text(json.dumps([{"input": "doc", "output": "sum"}]))
    with pytest.raises(DataError, match=r"summary/xsum_train_4000.json does not match .* \(git blob sha1 "):
        data.import_study(folder, tmp_path / "data", verify=True, **QUIET)
    assert _nothing_written(tmp_path / "data")
    for size in (4000, 6000):
        (folder / "summary" / f"xsum_train_{size}.json").unlink()
    data.import_study(folder, tmp_path / "data", verify=True, **QUIET)
    assert data.train_sizes("summary", "xsum", tmp_path / "data") == [2000]
    assert data.read_meta("summary", "xsum", tmp_path / "data")["release"]["verified_files"] == 51


def test_git_blob_ids_are_gits_own(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello\n")
    assert study.git_blob_sha1(blob) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`


@needs_release
def test_the_real_release_matches_the_shipped_sums(tmp_path):
    """The sums genft ships are the study's release (where a copy of it is present)."""
    data.import_study(STUDY_DATA, tmp_path / "data", verify=True, **QUIET)
    assert data.read_meta("nli", "rte", tmp_path / "data")["release"]["commit"] == data.STUDY_COMMIT
    # git's own blob id of a released file equals what genft computes
    assert study.git_blob_sha1(STUDY_DATA / "summary" / "xsum_train_2000.json") == \
        "f73f7a06eb312073b352bc1fba2d3aa7c4957e0a"


@needs_release
def test_the_real_release_has_nine_scored_test_items_in_their_demo_pools(tmp_path):
    """Under the study protocol (the first 250 test items), 9 scored items are also demonstrations of their own
    data set, e.g. MNLI-m #18 = demo 0 and PAWS #248 = demo 2: import-study records each in meta.json."""
    root = tmp_path / "data"
    data.import_study(STUDY_DATA, root, protocol="study", **QUIET)
    overlap = {k: data.read_meta(*k.split("/"), root).get("test_in_demos") for k in data.data_protocols(root)}
    overlap = {k: v for k, v in overlap.items() if v}
    assert sum(map(len, overlap.values())) == 9
    assert overlap["nli/mnli_m"] == [{"test": 18, "demo": 0}] and overlap["paraphrase/paws"] == [{"test": 248,
                                                                                                    "demo": 2}]
