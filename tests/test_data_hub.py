"""`genft data build-hub`: all 18 sets built from local stand-ins written in each hub set's own column schema.

Every stand-in row carries its hub label in its text ("#<i> L=<label>"), so the test can check the study's
conversion (label mapping, thresholds, field mapping) on every item written."""
import json
import re

import pytest

from genft import data
from genft.prompts import get_task
from genft.data import DataError, hub

N_ROWS = 120  # rows per stand-in split
SIZES = (20, 40, 60)
TEST_SIZE = 25


def _row(source: hub.HubSource, split: str, i: int) -> dict:
    """Row i of a stand-in split in the hub set's own schema; texts say which hub label they carry."""
    tag = f"{source.dataset} {split} #{i}"
    name = source.dataset
    if name in ("xsum",):
        return {"id": str(i), "document": f"doc {tag}", "summary": f"sum {tag}"}
    if name == "xlsum":
        return {"id": str(i), "url": "u", "title": "t", "summary": f"sum {tag}", "text": f"doc {tag}"}
    if name == "peerread":
        return {"title": f"title {tag}", "accepted": True, "abstract": f"abstract {tag}"}
    if name == "cnndm":
        return {"id": str(i), "article": f"article {tag}", "highlights": f"highlights {tag}"}
    if name == "socialiqa":
        label = str(1 + i % 3)
        return {"context": f"ctx {tag}", "question": f"q {tag}", "answerA": f"A {tag}", "answerB": f"B {tag}",
                "answerC": f"C {tag}", "label": label}
    if name == "tweetqa":
        return {"qid": str(i), "Tweet": f"tweet {tag}", "Question": f"q {tag}",
                "Answer": [] if i % 10 == 9 else [f"ans {tag}", "second answer"]}
    if name == "sciq":
        return {"question": f"q {tag}", "distractor1": "d1", "distractor2": "d2", "distractor3": "d3",
                "correct_answer": f"ans {tag}", "support": "" if i % 10 == 9 else f"support {tag}"}
    if name == "amazon":
        return {"label": i % 2, "title": "t", "content": f"review {tag} L={i % 2}"}
    if name == "amazonfood":
        score = 1 + i % 5
        return {"Id": i, "ProductId": "p", "UserId": "u", "Score": score, "Summary": "s", "Text": f"food {tag} L={score}"}
    if name == "sst2":
        return {"idx": i, "sentence": f"movie {tag} L={i % 2}", "label": i % 2}
    if name == "yelp":
        return {"label": i % 5, "text": f"place {tag} L={i % 5}"}
    if name == "paws":
        return {"id": i, "sentence1": f"s1 {tag} L={i % 2}", "sentence2": f"s2 {tag}", "label": i % 2}
    if name == "qqp":
        return {"idx": i, "question1": f"q1 {tag} L={i % 2}", "question2": f"q2 {tag}", "label": i % 2}
    if name == "stsb":
        score = round((i % 11) * 0.5, 1)  # 0.0 .. 5.0, 3.5 included
        return {"idx": i, "sentence1": f"s1 {tag} L={score}", "sentence2": f"s2 {tag}", "label": score}
    if name in ("mnli_m", "mnli_mm"):
        label = -1 if i % 10 == 9 else i % 3
        return {"idx": i, "premise": f"p {tag} L={label}", "hypothesis": f"h {tag}", "label": label}
    if name == "rte":
        return {"idx": i, "sentence1": f"p {tag} L={i % 2}", "sentence2": f"h {tag}", "label": i % 2}
    if name == "gptnli":
        return {"text_a": f"p {tag} L={i % 3}", "text_b": f"h {tag}", "label": i % 3, "guid": i}
    raise AssertionError(name)


def write_stand_ins(hub_dir, n=N_ROWS):
    """Every split each hub source reads, as the hub set's own JSON lines (one shared file per hub split)."""
    for source in hub.HUB_SOURCES.values():
        for split in {source.test_split, source.pool_split}:
            path = hub.stand_in_path(hub_dir, source, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [_row(source, split, i) for i in range(n)]
            rows.append(dict(rows[0]))  # a duplicate row: skipped, never in two splits
            with open(path, "a", encoding="utf-8") as f:  # mnli_m and mnli_mm share nyu-mll/glue mnli
                f.writelines(json.dumps(r) + "\n" for r in rows)


# The study's conversions, checked from the hub label each text carries.
EXPECTED_LABEL = {
    "amazon": {"0": "negative", "1": "positive"},
    "sst2": {"0": "negative", "1": "positive"},
    "yelp": {"0": "negative", "1": "negative", "2": "negative", "3": "positive", "4": "positive"},  # stars = label+1
    "amazonfood": {"1": "negative", "2": "negative", "3": "negative", "4": "positive", "5": "positive"},
    "paws": {"0": "no", "1": "yes"},
    "qqp": {"0": "no", "1": "yes"},
    "mnli_m": {"0": "entailment", "1": "neutral", "2": "contradiction"},
    "mnli_mm": {"0": "entailment", "1": "neutral", "2": "contradiction"},
    "gptnli": {"0": "entailment", "1": "neutral", "2": "contradiction"},
    "rte": {"0": "entailment", "1": "neutral"},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("hub")
    write_stand_ins(base / "stand-ins")
    root = base / "data"
    res = hub.build_hub(["all"], root, sizes=SIZES, test_size=TEST_SIZE, seed=7, hub_dir=base / "stand-ins",
                        log=lambda *_: None)
    return root, res, base


def test_builds_all_18_sets_with_nested_sizes_and_disjoint_splits(built):
    root, res, _ = built
    assert sorted(res) == sorted(f"{d.task}/{d.name}" for d in data.STUDY_DATASETS.values())
    for info in data.STUDY_DATASETS.values():
        spec = get_task(info.task)
        test = data.load_split(info.task, info.name, "test", root)
        demos = data.load_split(info.task, info.name, "demos", root)
        assert len(test) == TEST_SIZE, info.name
        assert len(demos) == data.study_demo_pool(info.name)
        key = lambda it: tuple(it[f] for f in spec.inputs)  # noqa: E731
        test_keys = {key(it) for it in test}
        assert len(test_keys) == TEST_SIZE, f"{info.name}: duplicate inputs in test"
        assert not test_keys & {key(it) for it in demos}, f"{info.name}: a demo is a test item"
        if spec.is_classification:  # every label among the first len(labels) demos (RTE: two of the three)
            labels = set(EXPECTED_LABEL.get(info.name, {"": "yes", " ": "no"}).values())
            assert {d["label"] for d in demos[: len(labels)]} == labels, info.name
        if info.trains:
            assert data.train_sizes(info.task, info.name, root) == list(SIZES)
            trains = [data.load_split(info.task, info.name, f"train_{n}", root) for n in SIZES]
            assert [len(t) for t in trains] == list(SIZES)
            assert trains[0] == trains[1][:20] and trains[1] == trains[2][:40], f"{info.name}: sizes not nested"
            train_keys = {key(it) for it in trains[-1]}
            assert not train_keys & test_keys, f"{info.name}: a training item is in the test set"
            assert not train_keys & {key(it) for it in demos}, f"{info.name}: a demo is a training item"
        else:
            assert data.train_sizes(info.task, info.name, root) == []


def test_conversions_on_known_items(built):
    root, _, _ = built
    for name, mapping in EXPECTED_LABEL.items():
        info = data.STUDY_DATASETS[name]
        for split in ("test", "demos"):
            for it in data.load_split(info.task, name, split, root):
                text = it.get("text") or it.get("sentence1") or it.get("premise")
                hub_label = re.search(r"L=(\S+)", text).group(1)
                assert it["label"] == mapping[hub_label], (name, text, it["label"])
    # STS-B: score > 3.5 -> yes, else no (3.5 itself is "no")
    for it in data.load_split("paraphrase", "stsb", "test", root) + data.load_split("paraphrase", "stsb", "demos", root):
        score = float(re.search(r"L=(\S+)", it["sentence1"]).group(1))
        assert it["label"] == ("yes" if score > 3.5 else "no"), it
    # SocialIQA: the answer is answer{A,B,C}[label]; question and context from their columns
    for it in data.load_split("question", "socialiqa", "train_60", root):
        i = int(re.search(r"#(\d+)", it["context"]).group(1))
        assert it["answer"].startswith("ABC"[i % 3] + " ") and it["question"].startswith("q ")
    # TweetQA: Tweet -> context, Answer[0] -> answer; a row with no answer is skipped
    for it in data.load_split("question", "tweetqa", "test", root):
        assert it["context"].startswith("tweet ") and it["answer"].startswith("ans ")
    # SciQ: support -> context (empty supports skipped), correct_answer -> answer
    assert all(it["context"].startswith("support ") and it["answer"].startswith("ans ")
               for it in data.load_split("question", "sciq", "test", root))
    # Summaries: the document and summary columns of each source
    assert data.load_split("summary", "peerread", "test", root)[0]["document"].startswith("abstract ")
    assert data.load_split("summary", "peerread", "test", root)[0]["summary"].startswith("title ")
    assert data.load_split("summary", "cnndm", "test", root)[0]["summary"].startswith("highlights ")
    assert data.load_split("summary", "xlsum", "test", root)[0]["document"].startswith("doc ")


def test_meta_records_source_revision_seed_conversion_and_skips(built):
    root, _, base = built
    meta = data.read_meta("nli", "mnli_m", root)
    assert meta["source"] == "hub" and meta["protocol"] == "clean" and meta["seed"] == 7
    assert meta["hub"]["id"] == "nyu-mll/glue" and meta["hub"]["config"] == "mnli"
    assert meta["hub"]["test_split"] == "validation_matched" and meta["hub"]["train_and_demo_split"] == "train"
    stand_in = meta["hub"]["splits"]["train"]["stand_in"]
    assert stand_in == str(base / "stand-ins" / "nyu-mll__glue" / "mnli" / "train.jsonl")
    assert meta["hub"]["splits"]["train"]["sha256"] == data.file_sha256(stand_in)
    assert meta["hub"]["splits"]["train"]["revision"] == "unknown"  # a local file has no hub revision
    assert "-1 skipped" in meta["conversion"] and meta["sizes"] == list(SIZES)
    assert meta["skipped"]["validation_matched"]["label -1 not in [0, 1, 2]"] > 0
    assert data.read_meta("question", "sciq", root)["skipped"]["test"]["empty text"] > 0
    assert data.read_meta("nli", "rte", root)["hub"]["splits"]["train"]["sha256"]


def test_same_seed_same_files_other_seed_other_sample(built, tmp_path):
    root, _, base = built
    again = tmp_path / "again"
    hub.build_hub(["sentiment/amazon"], again, sizes=SIZES, test_size=TEST_SIZE, seed=7, hub_dir=base / "stand-ins",
                  log=lambda *_: None)
    assert data.read_meta("sentiment", "amazon", again)["files"] == data.read_meta("sentiment", "amazon", root)["files"]
    other = tmp_path / "other"
    hub.build_hub(["sentiment/amazon"], other, sizes=SIZES, test_size=TEST_SIZE, seed=8, hub_dir=base / "stand-ins",
                  log=lambda *_: None)
    assert data.load_split("sentiment", "amazon", "test", other) != data.load_split("sentiment", "amazon", "test", root)


def test_errors_name_the_file_the_column_and_write_nothing(built, tmp_path):
    _, _, base = built
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"nyu-mll__glue/stsb/validation.jsonl: no such file"):
        hub.build_hub(["paraphrase/stsb"], out, hub_dir=tmp_path / "empty", log=lambda *_: None)
    bad = tmp_path / "bad"
    write_stand_ins(bad, n=40)
    path = hub.stand_in_path(bad, hub.HUB_SOURCES["yelp"], "train")
    path.write_text("".join(json.dumps({"stars": 4, "text": "x"}) + "\n" for _ in range(3)))
    with pytest.raises(DataError, match=r"yelp_review_full/train.jsonl: no column 'label'"):
        hub.build_hub(["sentiment"], out, sizes=(5,), test_size=5, hub_dir=bad, log=lambda *_: None)
    with pytest.raises(DataError, match=r"xsum split .train. \(xsum\): only 40 usable items, 6000 needed"):
        hub.build_hub(["summary/xsum"], out, hub_dir=bad, test_size=5, log=lambda *_: None)
    with pytest.raises(DataError, match=r"unknown data set 'summary/imdb'"):
        hub.build_hub(["summary/imdb"], out, hub_dir=bad, log=lambda *_: None)
    assert not out.exists() or not any(out.rglob("*.jsonl"))  # sets are all built before any is written


def test_does_not_replace_another_source_unless_asked(built, tmp_path):
    _, _, base = built
    root = tmp_path / "data"
    good = [{"text": "fine", "label": "positive"}]
    data.write_dataset("sentiment", "sst2", {"test": good, "demos": good}, root, {"source": "study"})
    with pytest.raises(DataError, match=r"holds sentiment/sst2 from source 'study'; pass --replace"):
        hub.build_hub(["sentiment/sst2"], root, test_size=5, hub_dir=base / "stand-ins", log=lambda *_: None)
    assert data.load_split("sentiment", "sst2", "test", root) == good
    hub.build_hub(["sentiment/sst2"], root, test_size=5, hub_dir=base / "stand-ins", replace=True, log=lambda *_: None)
    assert data.read_meta("sentiment", "sst2", root)["source"] == "hub"


def test_cli_build_hub_xsum_sizes(built, tmp_path, monkeypatch):
    from genft import cli

    _, _, base = built
    monkeypatch.setenv("GENFT_HUB_DIR", str(base / "stand-ins"))
    rc = cli.main(["data", "build-hub", "summary/xsum", "--sizes", "10", "20", "30", "--test-size", "10",
                   "--data-dir", str(tmp_path)])
    assert rc == 0
    assert data.train_sizes("summary", "xsum", tmp_path) == [10, 20, 30]
    rc = cli.main(["data", "build-hub", "summary/nope", "--data-dir", str(tmp_path)])
    assert rc == 2


def test_the_study_sizes_have_one_definition_that_matches_the_release():
    """The release's training files (the shipped sums) hold exactly the sizes the data package says; the hub
    build and its command line default to them."""
    import inspect

    from genft.cli import build_parser

    sums = data.release_sums()
    for info in data.STUDY_DATASETS.values():
        if not info.trains:
            continue
        sizes = lambda files: sorted(int(m.group(1)) for f in files  # noqa: E731
                                     if (m := re.search(rf"/{info.study_file}_train_(\d+)\.json$", f)))
        assert tuple(sizes(sums["sha256"])) == data.study_train_sizes(info.name)
        assert tuple(sizes([*sums["sha256"], *sums["git_blob_sha1"]])) == data.STUDY_TRAIN_SIZES
    assert inspect.signature(hub.build_hub).parameters["sizes"].default == data.STUDY_TRAIN_SIZES
    args = build_parser().parse_args(["data", "build-hub", "all"])
    assert tuple(args.sizes) == data.STUDY_TRAIN_SIZES
