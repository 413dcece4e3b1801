"""Build the study's data sets from the public hub data sets they were sampled from (`genft data build-hub`).

    genft data build-hub summary/xsum --sizes 2000 4000 6000     # XSum train_2000 ⊂ train_4000 ⊂ train_6000
    genft data build-hub all                                     # all 18 sets

For each set (`HUB_SOURCES`): the hub data set, its config and splits, and the study's conversion to genft's
canonical fields (label mapping, thresholds, fields; recorded in meta.json).  Sampling, with one seed:

- test: `test_size` (500) items drawn from the test split by a seeded permutation, in that order;
- training sets: one seeded permutation of the training split, skipping every item whose input equals a test
  item's (a stable key: the canonical input fields), and train_<N> = its first N items for every N of `sizes`
  (default: the study's, `registry.STUDY_TRAIN_SIZES`), so the sizes are nested prefixes (2000 ⊂ 4000 ⊂ 6000);
- demonstrations: the next items of the same permutation (never in test or train), as many as the study's
  release holds (`registry.study_demo_pool`: 8, 4 for XSum, XLSum, PeerRead, CNN/DM and TweetQA), ordered so
  that every label occurs among the first len(labels) demos;
- a set whose test items and demos come from one split (the hub set has no other labelled split) partitions one
  permutation: test first, then demos.
Rows that the conversion rejects (no gold label, an empty text, a duplicate input) are skipped and counted.

Where the data comes from: the hub through `datasets.load_dataset(hub_id, config, split=..., revision=...)` (the
revision recorded is the commit the hub resolves, else "unknown"), or, with --hub-dir DIR / $GENFT_HUB_DIR,
local stand-ins in each hub set's own column schema: DIR/<hub id, "/" -> "__">[/<config>]/<split>.jsonl, read
with `datasets.load_dataset("json", ...)` (how the tests run it offline).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ..prompts import get_task
from .layout import CLEAN, check_protocol, dataset_dir, file_sha256, read_meta, write_dataset
from .registry import STUDY_DATASETS, STUDY_TRAIN_SIZES, DataError, DatasetInfo, study_demo_pool

BUILDER_VERSION = 1
DEFAULT_TEST_SIZE = 500
DEFAULT_SEED = 42
HUB_DIR_ENV = "GENFT_HUB_DIR"

Convert = Callable[[Mapping], "dict | str"]  # a canonical item, or why the row is skipped


@dataclass(frozen=True)
class HubSource:
    dataset: str  # genft's data set name (registry.STUDY_DATASETS)
    hub_id: str
    config: str | None
    columns: tuple[str, ...]  # the hub set's own columns that the conversion reads
    test_split: str  # the hub split test items come from
    pool_split: str  # the hub split training items and demos come from (== test_split: one partitioned split)
    convert: Convert
    conversion: str  # what `convert` does, recorded in meta.json
    revision: str | None = None  # default hub revision (None: the hub's main)
    labels: tuple[str, ...] | None = None  # the labels the conversion yields (default: the task's)
    note: str = ""  # what is uncertain about this source


# ---------------------------------------------------------------- conversions (the study's, per docs/study.md §1)

SENTIMENT_01 = {0: "negative", 1: "positive"}
YES_NO_01 = {1: "yes", 0: "no"}
NLI_012 = {0: "entailment", 1: "neutral", 2: "contradiction"}
RTE_01 = {0: "entailment", 1: "neutral"}  # not_entailment -> neutral, as the study released RTE
STAR_THRESHOLD = 3.5  # the study's Yelp rule: stars < 3.5 negative, > 3.5 positive
STSB_THRESHOLD = 3.5  # the study's STS-B rule: score > 3.5 -> yes


def _labelled(mapping: Mapping[int, str], value) -> str:
    """A gold label from an int class (bool and -1, the hub's 'no label', are skipped)."""
    if isinstance(value, bool) or value not in mapping:
        return f"label {value!r} not in {sorted(mapping)}"
    return mapping[value]


def _fields(**fields) -> Convert:
    """A conversion that renames text columns: canonical field -> hub column."""
    return lambda row: {canon: row[col] for canon, col in fields.items()}


def _with_label(text_fields: Mapping[str, str], label_col: str, mapping: Mapping[int, str]) -> Convert:
    def convert(row):
        label = _labelled(mapping, row[label_col])
        if label not in mapping.values():
            return label
        return {**{canon: row[col] for canon, col in text_fields.items()}, "label": label}
    return convert


def _stars(text_col: str, stars: Callable[[Mapping], float]) -> Convert:
    def convert(row):
        s = stars(row)
        if s == STAR_THRESHOLD:
            return "rating exactly 3.5"
        return {"text": row[text_col], "label": "negative" if s < STAR_THRESHOLD else "positive"}
    return convert


def _stsb(row):
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"],
            "label": "yes" if float(row["label"]) > STSB_THRESHOLD else "no"}


def _social_iqa(row):
    choice = {"1": "answerA", "2": "answerB", "3": "answerC"}.get(str(row["label"]).strip())
    if choice is None:
        return f"label {row['label']!r} not 1/2/3"
    return {"context": row["context"], "answer": row[choice], "question": row["question"]}


def _tweet_qa(row):
    answers = row["Answer"]
    if not answers:
        return "no answer"
    return {"context": row["Tweet"], "answer": answers[0], "question": row["Question"]}


HUB_SOURCES: dict[str, HubSource] = {
    s.dataset: s
    for s in [
        HubSource("xsum", "EdinburghNLP/xsum", None, ("document", "summary"), "test", "train",
                  _fields(document="document", summary="summary"), "document -> document, summary -> summary"),
        HubSource("xlsum", "csebuetnlp/xlsum", "english", ("text", "summary"), "test", "train",
                  _fields(document="text", summary="summary"), "text -> document, summary -> summary",
                  note="the hub set is script-based; datasets 5 may need its parquet conversion (--revision "
                       "refs/convert/parquet)"),
        HubSource("peerread", "chreh/peer_read_neurips", None, ("abstract", "title"), "train", "train",
                  _fields(document="abstract", summary="title"), "abstract -> document, title -> summary "
                  "(the study: PeerRead abstract -> title)",
                  note="PeerRead's own hub set (allenai/peer_read) is script-based and nests abstracts in parsed "
                       "PDFs; this parquet copy has PeerRead's title/abstract columns but is a third-party upload, "
                       "one split (test and demos partition it)"),
        HubSource("cnndm", "abisee/cnn_dailymail", "3.0.0", ("article", "highlights"), "test", "train",
                  _fields(document="article", summary="highlights"), "article -> document, highlights -> summary"),
        HubSource("socialiqa", "allenai/social_i_qa", None, ("context", "question", "answerA", "answerB",
                  "answerC", "label"), "validation", "train", _social_iqa,
                  "context -> context, answer{A,B,C}[label '1'/'2'/'3'] -> answer, question -> question "
                  "(validation as test: the hub's test split has no labels)"),
        HubSource("tweetqa", "ucsbnlp/tweet_qa", None, ("Tweet", "Answer", "Question"), "validation", "train",
                  _tweet_qa, "Tweet -> context, Answer[0] -> answer, Question -> question (validation as test: "
                  "the hub's test split has no answers)"),
        HubSource("sciq", "allenai/sciq", None, ("support", "correct_answer", "question"), "test", "train",
                  _fields(context="support", answer="correct_answer", question="question"),
                  "support -> context, correct_answer -> answer, question -> question (rows with an empty support "
                  "skipped)"),
        HubSource("amazon", "fancyzhx/amazon_polarity", None, ("content", "label"), "test", "train",
                  _with_label({"text": "content"}, "label", SENTIMENT_01),
                  "content -> text, label 0 -> negative, 1 -> positive",
                  note="the study used Amazon multilingual reviews (English), no longer on the hub; its "
                       "binarisation rule is not stated. amazon_polarity (1-2 stars negative, 4-5 positive) stands in"),
        HubSource("amazonfood", "kfuangsung/AmazonFineFoodReviews", None, ("Text", "Score"), "test", "train",
                  _stars("Text", lambda r: float(r["Score"])),
                  "Text -> text, Score (1-5 stars) < 3.5 -> negative, > 3.5 -> positive (the study's Yelp rule)",
                  note="a third-party upload of the Stanford/Kaggle Amazon Fine Food Reviews (Kaggle columns); the "
                       "study's binarisation for this set is not stated: genft applies its Yelp rule"),
        HubSource("sst2", "nyu-mll/glue", "sst2", ("sentence", "label"), "validation", "train",
                  _with_label({"text": "sentence"}, "label", SENTIMENT_01),
                  "sentence -> text, label 0 -> negative, 1 -> positive (validation as test: GLUE's test labels "
                  "are hidden)"),
        HubSource("yelp", "Yelp/yelp_review_full", None, ("text", "label"), "test", "train",
                  _stars("text", lambda r: int(r["label"]) + 1),
                  "text -> text, stars = label + 1; stars < 3.5 -> negative, > 3.5 -> positive (the study's rule)"),
        HubSource("paws", "google-research-datasets/paws", "labeled_final", ("sentence1", "sentence2", "label"),
                  "test", "train", _with_label({"sentence1": "sentence1", "sentence2": "sentence2"}, "label",
                                               YES_NO_01),
                  "sentence1, sentence2 -> sentence1, sentence2; label 1 -> yes, 0 -> no"),
        HubSource("qqp", "nyu-mll/glue", "qqp", ("question1", "question2", "label"), "validation", "train",
                  _with_label({"sentence1": "question1", "sentence2": "question2"}, "label", YES_NO_01),
                  "question1, question2 -> sentence1, sentence2; label 1 (duplicate) -> yes, 0 -> no (validation as "
                  "test)"),
        HubSource("stsb", "nyu-mll/glue", "stsb", ("sentence1", "sentence2", "label"), "validation", "train", _stsb,
                  "sentence1, sentence2 -> sentence1, sentence2; score (0-5) > 3.5 -> yes, else no (validation as "
                  "test)"),
        HubSource("mnli_m", "nyu-mll/glue", "mnli", ("premise", "hypothesis", "label"), "validation_matched",
                  "train", _with_label({"premise": "premise", "hypothesis": "hypothesis"}, "label", NLI_012),
                  "premise, hypothesis; label 0 -> entailment, 1 -> neutral, 2 -> contradiction, -1 skipped; test "
                  "from validation_matched, training and demos from train"),
        HubSource("mnli_mm", "nyu-mll/glue", "mnli", ("premise", "hypothesis", "label"), "validation_mismatched",
                  "validation_mismatched",
                  _with_label({"premise": "premise", "hypothesis": "hypothesis"}, "label", NLI_012),
                  "premise, hypothesis; label 0 -> entailment, 1 -> neutral, 2 -> contradiction, -1 skipped; test "
                  "and demos partition validation_mismatched (the mismatched genres)"),
        HubSource("rte", "nyu-mll/glue", "rte", ("sentence1", "sentence2", "label"), "train", "train",
                  _with_label({"premise": "sentence1", "hypothesis": "sentence2"}, "label", RTE_01),
                  "sentence1 -> premise, sentence2 -> hypothesis; label 0 -> entailment, 1 (not_entailment) -> "
                  "neutral (the study's mapping); test and demos partition train (validation holds only 277 items; "
                  "RTE is never trained on)", labels=tuple(RTE_01.values())),
        HubSource("gptnli", "pietrolesci/gpt3_nli", None, ("text_a", "text_b", "label"), "train", "train",
                  _with_label({"premise": "text_a", "hypothesis": "text_b"}, "label", NLI_012),
                  "text_a -> premise, text_b -> hypothesis; label 0 -> entailment, 1 -> neutral, 2 -> contradiction; "
                  "test and demos partition its one split"),
    ]
}


# ---------------------------------------------------------------- loading (the hub or local stand-ins)


def stand_in_path(hub_dir: str | os.PathLike, source: HubSource, split: str) -> Path:
    """Where a local stand-in of a hub split lives: DIR/<hub id, "/" -> "__">[/<config>]/<split>.jsonl."""
    folder = Path(hub_dir) / source.hub_id.replace("/", "__")
    return (folder / source.config if source.config else folder) / f"{split}.jsonl"


def _resolve_revision(hub_id: str, revision: str | None) -> str | None:
    """The commit the hub resolves a revision to, or None (offline, or the hub does not say)."""
    from huggingface_hub import HfApi  # comes with datasets; imported here, when a build asks the hub

    try:
        return HfApi().dataset_info(hub_id, revision=revision, timeout=30).sha
    except Exception:  # noqa: BLE001 - any failure to ask only means the revision is not known
        return None


def _load(source: HubSource, split: str, hub_dir, revision: str | None, cache_dir: str) -> tuple[object, dict]:
    """(a datasets.Dataset of one split, provenance)."""
    import datasets  # heavy (about 1 s): loaded when a build runs, not whenever genft.data is imported

    if hub_dir:
        path = stand_in_path(hub_dir, source, split)
        if not path.is_file():
            raise DataError(f"{path}: no such file (a local stand-in of {source.hub_id}"
                            f"{' ' + source.config if source.config else ''} split {split!r}, one JSON object a line "
                            f"with the hub set's columns {', '.join(source.columns)})")
        datasets.disable_progress_bars()  # a local file: no download to follow
        ds = datasets.load_dataset("json", data_files={split: str(path)}, split=split, cache_dir=cache_dir)
        prov = {"stand_in": str(path), "sha256": file_sha256(path), "revision": "unknown"}
    else:
        rev = revision or source.revision
        resolved = _resolve_revision(source.hub_id, rev)
        try:
            ds = datasets.load_dataset(source.hub_id, source.config, split=split, revision=resolved or rev)
        except Exception as e:  # noqa: BLE001 - the datasets library raises many kinds; all mean "not loadable"
            raise DataError(
                f"could not load {source.hub_id}{' (' + source.config + ')' if source.config else ''} split {split!r} "
                f"from the hub: {type(e).__name__}: {str(e)[:300]}. It needs internet access to the hub (or a local "
                f"copy: --hub-dir DIR with {stand_in_path('DIR', source, split)})") from None
        prov = {"revision": resolved or "unknown", "requested_revision": rev or "main"}
    missing = [c for c in source.columns if c not in ds.column_names]
    if missing:
        where = prov.get("stand_in") or f"{source.hub_id} split {split}"
        raise DataError(f"{where}: no column {missing[0]!r} (the conversion of {source.dataset} reads "
                        f"{', '.join(source.columns)}; the data has {', '.join(ds.column_names)})")
    return ds, prov


# ---------------------------------------------------------------- sampling


def _permutation(n: int, seed: int, dataset: str, split: str):
    import numpy as np  # with datasets

    digest = hashlib.sha256(f"{seed}/{dataset}/{split}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big")).permutation(n)


def _items(ds, order, source: HubSource, info: DatasetInfo, seen: set, skipped: Counter) -> Iterator[dict]:
    """Valid canonical items of `ds` in `order`; a key (the input fields) already `seen` is skipped."""
    spec = get_task(info.task)
    for i in order:
        item = source.convert(ds[int(i)])
        if isinstance(item, str):
            skipped[item] += 1
            continue
        if any(not isinstance(item[f], str) or not item[f].strip() for f in spec.fields):
            skipped["empty text"] += 1
            continue
        key = json.dumps([item[f].strip() for f in spec.inputs])
        if key in seen:
            skipped["duplicate input (or in the test set)"] += 1
            continue
        seen.add(key)
        yield item


def _take(stream: Iterator[dict], n: int, what: str) -> list[dict]:
    out = [it for _, it in zip(range(n), stream)]
    if len(out) < n:
        raise DataError(f"{what}: only {len(out)} usable items, {n} needed; pass a smaller --sizes / --test-size")
    return out


def _demo_pool(stream: Iterator[dict], n: int, labels: tuple[str, ...], what: str) -> list[dict]:
    """n demos in draw order, except that the first len(labels) are the first item of each label (classification)."""
    if not labels:
        return _take(stream, n, what)
    drawn, first = [], {}
    for item in stream:
        drawn.append(item)
        first.setdefault(item["label"], len(drawn) - 1)
        if len(first) == len(labels) and len(drawn) >= n:
            break
    if len(first) < len(labels) or len(drawn) < n:
        raise DataError(f"{what}: the demo pool needs {n} items with every label among them; the split has "
                        f"{len(drawn)} usable items, labels {sorted(first)}")
    heads = sorted(first.values())
    return [drawn[i] for i in heads] + [it for i, it in enumerate(drawn) if i not in heads][: n - len(heads)]


def build_splits(source: HubSource, info: DatasetInfo, load: Callable[[str], tuple], sizes, test_size: int,
                 seed: int) -> tuple[dict[str, list[dict]], dict]:
    """The study-format splits of one set from its hub splits (`load(split) -> (dataset, provenance)`)."""
    spec = get_task(info.task)
    seen: set = set()
    skipped: dict[str, Counter] = {}
    test_ds, test_prov = load(source.test_split)
    skipped[source.test_split] = Counter()
    test_stream = _items(test_ds, _permutation(len(test_ds), seed, info.name, source.test_split), source, info,
                         seen, skipped[source.test_split])
    what = f"{source.hub_id} split {source.test_split!r} ({info.name})"
    splits = {"test": _take(test_stream, test_size, what)}
    provenance = {source.test_split: test_prov}
    if source.pool_split == source.test_split:
        pool_stream = test_stream  # one split, partitioned: the same permutation continues
    else:
        pool_ds, provenance[source.pool_split] = load(source.pool_split)
        skipped[source.pool_split] = Counter()
        pool_stream = _items(pool_ds, _permutation(len(pool_ds), seed, info.name, source.pool_split), source, info,
                             seen, skipped[source.pool_split])
        what = f"{source.hub_id} split {source.pool_split!r} ({info.name})"
    if info.trains:
        train = _take(pool_stream, max(sizes), what)
        for n in sorted(sizes):
            splits[f"train_{n}"] = train[:n]  # nested: every size is a prefix of the largest
    labels = spec.labels if source.labels is None else source.labels
    splits["demos"] = _demo_pool(pool_stream, study_demo_pool(source.dataset), labels, what)
    return splits, {"provenance": provenance, "skipped": {k: dict(v) for k, v in skipped.items() if v}}


# ---------------------------------------------------------------- the command


def select_sets(names) -> list[DatasetInfo]:
    """TASK/DATASET, TASK (every set of the task) or 'all' -> the study's data sets, in registry order."""
    chosen = []
    for name in names:
        if name == "all":
            hits = list(STUDY_DATASETS.values())
        elif "/" in name:
            task, _, ds = name.partition("/")
            info = STUDY_DATASETS.get(ds)
            hits = [info] if info is not None and info.task == task else []
        else:
            hits = [d for d in STUDY_DATASETS.values() if d.task == name]
        if not hits:
            known = ", ".join(f"{d.task}/{d.name}" for d in STUDY_DATASETS.values())
            raise DataError(f"unknown data set {name!r} for build-hub: expected TASK/DATASET, a task or 'all' "
                            f"({known})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def build_hub(names, root=None, sizes=STUDY_TRAIN_SIZES, test_size: int = DEFAULT_TEST_SIZE, seed: int = DEFAULT_SEED,
              hub_dir=None, revision: str | None = None, replace: bool = False, log=print) -> dict:
    """Build study-format data sets from the hub (or local stand-ins).  Returns {task/dataset: meta}.
    Every set is built and checked before any is written."""
    infos = select_sets(names)
    sizes = sorted(set(int(n) for n in sizes))
    if not sizes or sizes[0] < 1 or test_size < 1:
        raise DataError(f"sizes {sizes} and test size {test_size} must be positive")
    hub_dir = hub_dir or os.environ.get(HUB_DIR_ENV) or None
    check_protocol(root, CLEAN)
    for info in infos:
        folder = dataset_dir(info.task, info.name, root)
        if (folder / "meta.json").is_file() and not replace:
            source = read_meta(info.task, info.name, root).get("source")
            if source != "hub":
                raise DataError(f"{folder} holds {info.task}/{info.name} from source {source!r}; pass --replace to "
                                f"replace it with the hub build, or --data-dir another folder")
    built = []
    with tempfile.TemporaryDirectory(prefix="genft-hub-") as cache_dir:
        for info in infos:
            source = HUB_SOURCES[info.name]
            splits, record = build_splits(
                source, info, lambda split, s=source: _load(s, split, hub_dir, revision, cache_dir), sizes,
                test_size, seed)
            built.append((info, source, splits, record))
    results = {}
    for info, source, splits, record in built:
        meta = {
            "source": "hub",
            "protocol": CLEAN,
            "domain": info.domain,
            "description": info.description,
            "hub": {"id": source.hub_id, "config": source.config, "test_split": source.test_split,
                    "train_and_demo_split": source.pool_split, "splits": record["provenance"]},
            "conversion": source.conversion,
            "note": source.note,
            "seed": seed,
            "sizes": sizes if info.trains else [],
            "skipped": record["skipped"],
            "builder": f"genft build-hub {BUILDER_VERSION}",
        }
        results[f"{info.task}/{info.name}"] = written = write_dataset(info.task, info.name, splits, root, meta)
        log(f"{info.task}/{info.name}: " + ", ".join(f"{k} {v['count']}" for k, v in written["files"].items())
            + f" (from {source.hub_id}{' ' + source.config if source.config else ''})")
    return results
