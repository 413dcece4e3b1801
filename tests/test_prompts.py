import hashlib
import json

import pytest
from study_release import prompt_map_bytes

from conftest import STUDY_DATA
from genft.data import release_sums
from genft.prompts import TASKS, render_context, render_demo, render_prompt, render_target

# docs/study.md §2, character for character, with the study's own field names.
STUDY_PROMPTS = {
    "summary": ("### Input:\n{input}\n### Summary:", "Please read the following text:{input}\nProvide a summary:"),
    "question": (
        "### Input:\n{input}\n### Answer:\n{answer}\n### Question:",
        "Given the context:{input}\nAnd the answer:{answer}\nGenerate a suitable question:",
    ),
    "sentiment": ("### Input:\n{input}\n### Sentiment:", "Analyze the sentiment of the following text:{input}\nSentiment:"),
    "nli": (
        "### Input_1:\n{input_1}\n### Input_2:\n{input_2}\n### Inference:",
        "Consider the following texts: Text 1:{input_1}\nText 2:{input_2}\nThe relation is ",
    ),
    "paraphrase": (
        "### Input_1:\n{input_1}\n### Input_2:\n{input_2}\n### Paraphrase Classification:",
        "Let's compare the two sentences: Sentence_1:{input_1}\nSentence_2:{input_2}\nAre they paraphrasing?:",
    ),
}


def _study_item(spec):
    """A study-format item with distinct values, and the same item in genft's canonical fields."""
    raw = {key: f"<{key} text>" for key in spec.study_fields}
    raw["output"] = spec.labels[0] if spec.labels else "<output text>"
    return raw, {canon: raw[key] for key, canon in spec.study_fields.items()}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("prompt", [1, 2])
def test_prompt_strings_equal_the_study(task, prompt):
    spec = TASKS[task]
    raw, item = _study_item(spec)
    expected = STUDY_PROMPTS[task][prompt - 1].format(**raw)
    assert render_prompt(task, item, prompt) == expected
    assert render_target(task, item) == raw["output"]


def test_prompt_strings_equal_the_released_prompt_map():
    """genft's templates, written as the release's prompt_map.json (tests/study_release.py), are that file byte
    for byte: the sha256 genft ships for it.  (The shipped sums are checked against the release itself where a
    copy is present: test_data_study.)"""
    blob = prompt_map_bytes()
    assert hashlib.sha256(blob).hexdigest() == release_sums()["sha256"]["prompt_map.json"]
    released = json.loads(blob)
    for task, spec in TASKS.items():
        raw, item = _study_item(spec)
        for prompt in (1, 2):
            assert released[prompt - 1][spec.study_name] == STUDY_PROMPTS[task][prompt - 1]
            assert render_prompt(task, item, prompt) == released[prompt - 1][spec.study_name].format(**raw)
    if (STUDY_DATA / "prompt_map.json").is_file():
        assert (STUDY_DATA / "prompt_map.json").read_bytes() == blob


def test_context_layout_is_demos_then_query():
    demos = [{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}]
    query = {"text": "fine", "label": "positive"}
    ctx = render_context("sentiment", query, demos)
    assert ctx == (
        "### Input:\ngood\n### Sentiment:positive\n\n"
        "### Input:\nbad\n### Sentiment:negative\n\n"
        "### Input:\nfine\n### Sentiment:"
    )
    assert render_demo("sentiment", demos[0], target_delimiter=" ") == "### Input:\ngood\n### Sentiment: positive\n\n"


def test_braces_in_text_are_kept_verbatim():
    item = {"document": "a {weird} {{text}}", "summary": "s"}
    assert render_prompt("summary", item) == "### Input:\na {weird} {{text}}\n### Summary:"


def test_label_words_are_not_shared_between_tasks():
    seen = {}
    for spec in TASKS.values():
        for label in spec.labels:
            assert label not in seen, f"{label} in {spec.name} and {seen[label]}"
            seen[label] = spec.name
