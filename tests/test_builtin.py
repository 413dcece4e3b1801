"""The builtin data sets: deterministic, well-formed, balanced, disjoint splits, and a real domain shift."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from genft import builtin, data
from genft.prompts import TASKS

BUILTIN = list(builtin.GENERATORS)
STOP = set("a an the and of to in on at for is was it i this my with be by from that after as are were we but so "
           "has have had who what did do does".split())


def _splits(task, name, builtin_data):
    info = data.get_dataset(task, name)
    names = ["test", "demos"] + ([f"train_{n}" for n in builtin.TRAIN_SIZES] if info.trains else [])
    return {s: data.load_split(task, name, s, root=builtin_data) for s in names}


def _key(task, item):
    return json.dumps([item[f] for f in TASKS[task].inputs])


def test_registry_matches_generators():
    assert sorted(BUILTIN) == sorted(data.BUILTIN_DATASETS)
    assert set(builtin.SEEDS) == set(BUILTIN)
    for task in TASKS:
        infos = data.datasets_for(task, "builtin")
        assert sorted(d.domain for d in infos) == ["in", "out"]
        assert [d.domain for d in infos if d.trains] == ["in"]


def test_deterministic_byte_identical(tmp_path, builtin_data):
    lines = []
    again = builtin.generate(tmp_path, log=lines.append)
    assert len(lines) == len(BUILTIN) and all("test 100, demos 8" in line for line in lines)
    for key, meta in again.items():
        task, name = key.split("/")
        first = data.read_meta(task, name, builtin_data)
        assert first == meta
        assert meta["source"] == "builtin" and meta["seed"] == builtin.SEEDS[name]
        assert meta["generator_version"] == builtin.GENERATOR_VERSION
        assert meta["domain"] == data.get_dataset(task, name).domain and meta["description"]
        for path in data.dataset_dir(task, name, builtin_data).iterdir():
            assert path.read_bytes() == (data.dataset_dir(task, name, tmp_path) / path.name).read_bytes(), path
        for split, f in meta["files"].items():
            assert data.file_sha256(data.dataset_dir(task, name, tmp_path) / f"{split}.jsonl") == f["sha256"]


@pytest.mark.parametrize("name", BUILTIN)
def test_counts_nesting_disjoint(name, builtin_data):
    info = data.BUILTIN_DATASETS[name]
    splits = _splits(info.task, name, builtin_data)
    assert len(splits["test"]) == builtin.TEST_SIZE and len(splits["demos"]) == builtin.DEMO_POOL
    if info.trains:
        assert data.train_sizes(info.task, name, builtin_data) == list(builtin.TRAIN_SIZES)
        largest = splits[f"train_{builtin.TRAIN_SIZES[-1]}"]
        for n in builtin.TRAIN_SIZES:
            assert len(splits[f"train_{n}"]) == n
            assert splits[f"train_{n}"] == largest[:n]
        train = largest
    else:
        assert data.train_sizes(info.task, name, builtin_data) == []
        train = []
    keys = {s: [_key(info.task, it) for it in items] for s, items in (("test", splits["test"]),
                                                                       ("demos", splits["demos"]), ("train", train))}
    for s, ks in keys.items():
        assert len(ks) == len(set(ks)), f"duplicate inputs within {s}"
    assert not set(keys["test"]) & set(keys["train"])
    assert not set(keys["test"]) & set(keys["demos"])
    assert not set(keys["demos"]) & set(keys["train"])


@pytest.mark.parametrize("name", BUILTIN)
def test_labels_balanced_and_in_first_demos(name, builtin_data):
    info = data.BUILTIN_DATASETS[name]
    spec = TASKS[info.task]
    if not spec.is_classification:
        pytest.skip("generation task")
    splits = _splits(info.task, name, builtin_data)
    for split, items in splits.items():
        counts = Counter(it["label"] for it in items)
        assert set(counts) == set(spec.labels), split
        even = len(items) / len(spec.labels)
        assert all(abs(c - even) <= max(1, 0.1 * len(items)) for c in counts.values()), (split, counts)
    k = len(spec.labels)
    assert {it["label"] for it in splits["demos"][:k]} == set(spec.labels)
    assert k == min(spec.shots[1:])  # the smallest k-shot the study evaluates sees every label


def _content_words(items, task):
    return {w for it in items for f in TASKS[task].inputs for w in re.findall(r"[a-z]+", it[f].lower())
            if w not in STOP}


@pytest.mark.parametrize("task", list(TASKS))
def test_domain_shift(task, builtin_data):
    infos = data.datasets_for(task, "builtin")
    din = next(d for d in infos if d.trains)
    dout = next(d for d in infos if not d.trains)
    train = _content_words(data.load_split(task, din.name, "train_400", root=builtin_data), task)
    test_in = _content_words(data.load_split(task, din.name, "test", root=builtin_data), task)
    test_out = _content_words(data.load_split(task, dout.name, "test", root=builtin_data), task)

    def jaccard(a, b):
        return len(a & b) / len(a | b)

    within, across = jaccard(test_in, train), jaccard(test_out, train)
    assert within > 0.8, within
    assert across < 0.15 and across < within / 4, (within, across)


def test_sizes_short(builtin_data):
    for name in BUILTIN:
        info = data.BUILTIN_DATASETS[name]
        for it in data.load_split(info.task, name, "test", root=builtin_data):
            for f in TASKS[info.task].inputs:
                n = len(it[f].split())
                limit = 75 if f == "document" else 35
                assert n <= limit, (name, f, n, it[f])
                if f == "document":
                    assert n >= 35, (name, n)


def test_summary_target_is_composed_from_document(builtin_data):
    for it in data.load_split("summary", "builtin_sports", "train_100", root=builtin_data):
        m = re.fullmatch(r"(.+) beat (.+) (\d)-(\d) in (\w+) on (\w+)\.", it["summary"])
        assert m, it["summary"]
        for part in (m.group(1), m.group(2), m.group(5), m.group(6)):
            assert part in it["document"]
        assert int(m.group(3)) > int(m.group(4))


def test_failed_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = data.layout.file_sha256

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 3:  # in the middle of the first data set (it has 5 split files)
            raise OSError("disk full")
        return real(path)

    monkeypatch.setattr(data.layout, "file_sha256", flaky)  # where write_dataset looks it up
    with pytest.raises(OSError, match="disk full"):
        builtin.generate(tmp_path, log=lambda line: None)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() or (p.is_dir() and p.parent != tmp_path)]
    assert leftovers == []


def test_failed_regenerate_keeps_old_data(tmp_path, monkeypatch):
    builtin.generate(tmp_path, log=lambda line: None)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def boom(path):
        raise OSError("disk full")

    monkeypatch.setattr(data.layout, "file_sha256", boom)  # where write_dataset looks it up
    with pytest.raises(OSError):
        builtin.generate(tmp_path, log=lambda line: None)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary or .old folders
