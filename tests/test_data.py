import json
import os

import pytest

from genft import data
from genft.data import DataError

# Item counts of the study's release after dropping its defective items (gold "-", empty texts).
STUDY_TEST_COUNTS = {
    "xsum": 500, "xlsum": 500, "peerread": 500, "cnndm": 382, "socialiqa": 500, "tweetqa": 480, "sciq": 500,
    "amazon": 500, "amazonfood": 500, "sst2": 500, "yelp": 500, "paws": 500, "qqp": 500, "stsb": 500,
    "mnli_m": 492, "mnli_mm": 484, "rte": 500, "gptnli": 494,
}


def test_study_import_counts_and_order(study_data):
    for name, count in STUDY_TEST_COUNTS.items():
        info = data.STUDY_DATASETS[name]
        assert len(data.load_split(info.task, name, "test", study_data)) == count, name
        pool = data.load_split(info.task, name, "demos", study_data)
        assert len(pool) in (4, 8)
    assert data.train_sizes("sentiment", "amazon", study_data) == [2000, 4000, 6000]
    assert len(data.load_split("sentiment", "amazon", "train_6000", study_data)) == 5999
    assert len(data.load_split("summary", "xsum", "train_2000", study_data)) == 1999  # one empty document dropped
    # Order is kept: first-k demos depend on it.
    first = data.load_split("sentiment", "amazon", "demos", study_data)[0]
    assert first["text"].startswith("I wasn’t sure if I needed the built in light")
    assert first["label"] == "positive"
    meta = data.read_meta("nli", "mnli_m", study_data)
    assert meta["dropped_defective"] == {"test": 8}
    assert meta["files"]["test"]["sha256"] == data.file_sha256(data.dataset_dir("nli", "mnli_m", study_data) / "test.jsonl")


def test_rte_keeps_the_study_label_mapping(study_data):
    labels = {it["label"] for it in data.load_split("nli", "rte", "test", study_data)}
    assert labels == {"entailment", "neutral"}


def _release(tmp_path, edit=None):
    """A minimal copy of the study's release layout, every data set with one good item."""
    src = tmp_path / "release"
    from genft.prompts import get_task

    for info in data.STUDY_DATASETS.values():
        spec = get_task(info.task)
        item = {key: f"{key} text" for key in spec.study_fields}
        if spec.is_classification:
            item["output"] = spec.labels[0]
        folder = src / spec.study_name
        (folder / "few_shot").mkdir(parents=True, exist_ok=True)
        (folder / f"{info.study_file}_test_500.json").write_text(json.dumps([item, item]))
        (folder / "few_shot" / f"{info.study_file}_few_shot.json").write_text(json.dumps([item]))
        if info.trains:
            (folder / f"{info.study_file}_train_2000.json").write_text(json.dumps([item] * 3))
    if edit:
        edit(src)
    return src


def test_import_minimal_release(tmp_path):
    out = tmp_path / "data"
    res = data.import_study(_release(tmp_path), out, log=lambda *_: None)
    assert len(res) == 18
    assert data.load_split("paraphrase", "paws", "train_2000", out)[0] == {
        "sentence1": "input_1 text", "sentence2": "input_2 text", "label": "yes"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: (s / "sentiment" / "sst2_test_500.json").write_text("[{oops"), "sst2_test_500.json: not valid JSON"),
        (lambda s: (s / "sentiment" / "yelp_test_500.json").write_text("[]"), "yelp_test_500.json: the file holds no items"),
        (lambda s: (s / "sentiment" / "yelp_test_500.json").write_text('{"a": 1}'), "expected a JSON array"),
        (lambda s: (s / "detection" / "qqp_test_500.json").write_text(json.dumps([{"input_1": "a", "output": "yes"}])),
         "qqp_test_500.json item 0: missing field 'input_2'"),
        (lambda s: (s / "inference" / "rte_test_500.json").write_text(
            json.dumps([{"input_1": "a", "input_2": "b", "output": "not_entailment"}])),
         "rte_test_500.json item 0: unknown label 'not_entailment'"),
        (lambda s: (s / "summary" / "cnn_test_500.json").unlink(), "cnn_test_500.json: no such file"),
    ],
)
def test_import_errors_name_file_item_and_field(tmp_path, edit, message):
    out = tmp_path / "data"
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")):
        data.import_study(_release(tmp_path, edit), out, log=lambda *_: None)
    # Everything is checked before anything is written: no partial data set is left behind.
    assert not out.exists() or not any(out.rglob("*.jsonl"))


def test_import_drops_defective_items_and_counts_them(tmp_path):
    def edit(src):
        items = [{"input_1": "a", "input_2": "b", "output": "-"}, {"input_1": "", "input_2": "b", "output": "neutral"},
                 {"input_1": "a", "input_2": "b", "output": "neutral"}]
        (src / "inference" / "multinli_test_500.json").write_text(json.dumps(items))
    out = tmp_path / "data"
    data.import_study(_release(tmp_path, edit), out, log=lambda *_: None)
    assert len(data.load_split("nli", "mnli_m", "test", out)) == 1
    assert data.read_meta("nli", "mnli_m", out)["dropped_defective"] == {"test": 2}


def test_load_errors_name_line_and_command(tmp_path):
    with pytest.raises(DataError, match="genft data import-study"):
        data.load_split("sentiment", "amazon", "test", tmp_path)
    with pytest.raises(DataError, match="genft data builtin"):
        data.load_split("sentiment", "builtin_products", "test", tmp_path)
    with pytest.raises(DataError, match="unknown data set 'imdb' for task 'sentiment'"):
        data.load_split("sentiment", "imdb", "test", tmp_path)
    with pytest.raises(KeyError, match="unknown task 'qa'"):
        data.load_split("qa", "amazon", "test", tmp_path)
    folder = data.dataset_dir("sentiment", "amazon", tmp_path)
    folder.mkdir(parents=True)
    with pytest.raises(DataError, match="no split 'train_2000'"):
        data.load_split("sentiment", "amazon", "train_2000", tmp_path)
    (folder / "test.jsonl").write_text('{"text": "ok", "label": "positive"}\n{"text": "x", "label": "meh"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:2: unknown label 'meh'"):
        data.load_split("sentiment", "amazon", "test", tmp_path)
    (folder / "test.jsonl").write_text('{"text": "ok", "label": "positive"}\nnot json\n')
    with pytest.raises(DataError, match=r"test.jsonl:2: not valid JSON"):
        data.load_split("sentiment", "amazon", "test", tmp_path)
    (folder / "test.jsonl").write_text('{"label": "positive"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:1: missing field 'text'"):
        data.load_split("sentiment", "amazon", "test", tmp_path)


def test_write_dataset_is_atomic(tmp_path):
    good = [{"text": "fine", "label": "positive"}]
    data.write_dataset("sentiment", "amazon", {"test": good, "demos": good}, tmp_path)
    bad = [{"text": "fine", "label": "positive"}, {"text": "x", "label": "meh"}]
    with pytest.raises(DataError):
        data.write_dataset("sentiment", "amazon", {"test": bad, "demos": good}, tmp_path)
    # The earlier, complete data set is untouched and no temporary folder is left.
    assert data.load_split("sentiment", "amazon", "test", tmp_path) == good
    assert sorted(os.listdir(tmp_path / "sentiment")) == ["amazon"]


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFT_DATA_DIR", str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("GENFT_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert data.data_dir() == tmp_path / "data"
