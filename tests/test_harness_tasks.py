"""The genft lm-eval tasks: generated files up to date, valid, runnable from the CLI glob, and their strings
equal to genft.prompts (the strings fine-tuning uses)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from genft import data, harness, metrics
from genft.prompts import TASKS, get_task, render_context

sys.path.insert(0, str(REPO / "harness_tasks"))
import _generate_configs  # noqa: E402

ALL_TASKS = [
    harness.task_name(info.task, info.name, prompt) for info in data.all_datasets().values() for prompt in (1, 2)
]


@pytest.fixture(scope="module")
def all_data(study_format_data, tmp_path_factory):
    """The study's 18 data sets (the release made by the tests) plus the builtin sets in one folder."""
    from genft.builtin import generate

    root = tmp_path_factory.mktemp("all-data") / "data"
    shutil.copytree(study_format_data, root)
    generate(root, log=lambda *_: None)
    return root


def test_generated_task_files_are_up_to_date():
    for path, text in _generate_configs.render().items():
        assert path.is_file(), f"{path} missing: run python harness_tasks/_generate_configs.py"
        assert path.read_text() == text, f"{path} is stale: run python harness_tasks/_generate_configs.py"
    on_disk = {p.name for p in (REPO / "harness_tasks").rglob("genft_*.yaml")}
    assert on_disk == {f"{t}.yaml" for t in ALL_TASKS}


def test_tags_and_globs():
    tm = harness.task_manager()
    assert len(harness.match_tasks(["genft_study"], tm)) == 18
    assert set(harness.match_tasks(["genft_*"], tm)) == set(ALL_TASKS)
    assert harness.match_tasks(["genft_sentiment"], tm) == sorted(
        harness.task_name("sentiment", d.name) for d in data.datasets_for("sentiment"))
    assert len(harness.match_tasks(["genft_prompt2"], tm)) == len(ALL_TASKS) // 2
    with pytest.raises(KeyError, match="no genft task matches"):
        harness.match_tasks(["genft_nope"], tm)


def test_lm_eval_validate_passes_for_every_task():
    out = subprocess.run(
        [sys.executable, "-m", "lm_eval", "validate", "--tasks", ",".join(ALL_TASKS), "--include_path",
         str(REPO / "harness_tasks")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All tasks found and valid" in out.stdout + out.stderr


def test_cli_glob_runs_every_task(all_data, tiny_model, tmp_path):
    """The documented command: lm_eval --include_path harness_tasks --tasks 'genft_*' (2 items each)."""
    env = {**os.environ, "GENFT_DATA_DIR": str(all_data), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model}",
         "--include_path", "harness_tasks", "--tasks", "genft_*", "--limit", "2", "--device", "cpu",
         "--batch_size", "8", "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [result_file] = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(result_file.read_text())["results"]
    assert set(results) == set(ALL_TASKS)
    # Every task scored the first 2 items of its data set's test file, and its scores are those items' scores
    # (genft's metrics on the model's responses, against the gold answers in the data folder).
    for name, r in results.items():
        _, task, dataset = name.removesuffix("_p2").split("_", 2)
        spec, test = get_task(task), data.load_split(task, dataset, "test", all_data)
        [samples_file] = list(result_file.parent.glob(f"samples_{name}_[0-9]*.jsonl"))
        samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()),
                         key=lambda x: x["doc_id"])
        assert [x["doc_id"] for x in samples] == [0, 1], name
        per_item = []
        for x in samples:
            gold = test[x["doc_id"]][spec.target]
            if spec.is_classification:
                lls = [float(resp[0]) for resp in x["filtered_resps"]]
                per_item.append(metrics.classification_scores(spec, spec.labels.index(gold), lls))
            else:
                per_item.append(metrics.generation_scores(gold, x["filtered_resps"][0]))
        names = ["acc", "acc_norm", "acc_first", *(f"pred_{lab}" for lab in spec.labels)] \
            if spec.is_classification else ["rouge1", "rouge2", "rougeL"]
        for metric in names:
            assert r[f"{metric},none"] == pytest.approx(sum(s[metric] for s in per_item) / 2), (name, metric)
        if spec.is_classification:
            assert sum(r[f"pred_{lab},none"] for lab in spec.labels) == pytest.approx(1.0)
            assert [r[f"gold_{lab},none"] for lab in spec.labels] == \
                [sum(t[spec.target] == lab for t in test[:2]) / 2 for lab in spec.labels], name


@pytest.mark.parametrize("task, dataset, shots, prompt", [
    ("sentiment", "amazon", 2, 1), ("nli", "mnli_m", 3, 2), ("question", "socialiqa", 1, 1), ("summary", "xsum", 1, 2)])
def test_lm_eval_context_equals_genft_prompts(all_data, tiny_model, task, dataset, shots, prompt):
    """lm-eval's few-shot context is render_context(item, first k demos): the strings training uses."""
    lm = harness.load_model(tiny_model, "hf", batch_size=4)
    name = harness.task_name(task, dataset, prompt)
    res = harness.evaluate(lm, [name], num_fewshot=shots, limit=2, pretrained=tiny_model, data_root=all_data,
                           log_samples=True)
    test = data.load_split(task, dataset, "test", all_data)
    demos = data.load_split(task, dataset, "demos", all_data)[:shots]
    spec = get_task(task)
    for sample in res["samples"][name]:
        expected = render_context(spec, test[sample["doc_id"]], demos, prompt)
        contexts = {args[0] for args in sample["arguments"]}
        assert contexts == {expected}
        if spec.is_classification:
            continuations = [args[1] for args in sample["arguments"]]
            # The label words, then each label's first token (a prefix of the label).
            assert continuations[: len(spec.labels)] == list(spec.labels)
            for label, first in zip(spec.labels, continuations[len(spec.labels):]):
                assert first and label.startswith(first)


def test_missing_data_names_the_command(tiny_model, tmp_path):
    lm = harness.load_model(tiny_model, "hf", batch_size=4)
    with pytest.raises(data.DataError, match="genft data builtin"):
        harness.evaluate(lm, ["genft_sentiment_builtin_products"], limit=1, pretrained=tiny_model, data_root=tmp_path)


def test_classification_tasks_need_a_tokenizer(all_data):
    import importlib

    utils = importlib.import_module("utils")
    with pytest.raises(ValueError, match="pass pretrained="):
        utils.load(genft_task="sentiment", genft_dataset="amazon", genft_data_dir=str(all_data))
    assert set(TASKS) == {"summary", "question", "sentiment", "paraphrase", "nli"}


def test_every_task_file_name_parses_back_and_declares_its_primary_metric():
    """parse_task_name inverts task_name on every generated task file, and the metric genft takes as a task's
    score (primary_metric_of, what benchmarks and device checks read) is one its YAMLs declare."""
    import re

    from genft.prompts import parse_task_name, primary_metric_of, task_name

    files = sorted((REPO / "harness_tasks").glob("*/genft_*.yaml"))
    assert len(files) == 2 * len(data.all_datasets())
    for f in files:
        task, dataset, prompt = parse_task_name(f.stem)
        assert task_name(task, dataset, prompt) == f.stem and f.parent.name == task and dataset in data.all_datasets()
        family = "classification" if get_task(task).is_classification else "generation"
        texts = [(REPO / "harness_tasks" / p).read_text() for p in (f"{task}/_{task}.yaml", f"_genft_{family}.yaml")]
        declared = {m for text in texts for m in re.findall(r"^\s*- metric: (\w+)$", text, re.M)}
        assert primary_metric_of(f.stem) in declared
    assert primary_metric_of("genft_question_sciq_p2") == "rougeL"  # a generation task without "summary" in it
    for bad in ("genft_nope_x", "genft_nli_mnli_m_p1", "genft_sentiment_", "sentiment_amazon", "genft_nli_x_p02"):
        with pytest.raises(ValueError, match="not a genft lm-eval task name"):
            parse_task_name(bad)
