"""The one source of truth for prompt strings, label words and the demonstration layout.

Training (finetune/sft.py) and evaluation (harness_tasks/) both render text through this module, so the
strings a model is trained on are, character for character, the strings it is tested on.  The templates
are the study's (docs/study.md §2); only the field names are genft's canonical ones (see data.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

# The study puts the target right after the prompt's colon with no separator, and separates
# demonstrations by a blank line.  The target delimiter is a visible, reported setting because small
# models are very sensitive to it (docs/study.md §6).
TARGET_DELIMITER = ""
FEWSHOT_DELIMITER = "\n\n"
PROMPT_IDS = (1, 2)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # genft task name
    study_name: str  # the study's folder / prompt_map key
    kind: str  # "generation" or "classification"
    inputs: tuple[str, ...]  # canonical input fields, in template order
    target: str  # canonical target field
    study_fields: Mapping[str, str]  # study JSON key -> canonical field
    templates: Mapping[int, str]  # prompt id -> template over canonical fields
    labels: tuple[str, ...] = ()  # label words (classification only), in choice order
    shots: tuple[int, ...] = ()  # the study's evaluation shot counts
    ficl_shots: tuple[int, ...] = ()  # the study's FTICL k values

    @property
    def fields(self) -> tuple[str, ...]:
        return self.inputs + (self.target,)

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def family(self) -> str:
        """generation, classification (2-way) or nli (3-way): the study's shot-count families, and the keys
        a suite may use for per-task settings."""
        if not self.is_classification:
            return "generation"
        return "nli" if len(self.labels) > 2 else "classification"

    @property
    def primary_metric(self) -> str:
        """The study's score: the first-token rule for classification, ROUGE-L F for generation."""
        return "acc_first" if self.is_classification else "rougeL"


FAMILIES = ("generation", "classification", "nli")


TASKS: dict[str, TaskSpec] = {
    "summary": TaskSpec(
        name="summary",
        study_name="summary",
        kind="generation",
        inputs=("document",),
        target="summary",
        study_fields={"input": "document", "output": "summary"},
        templates={
            1: "### Input:\n{document}\n### Summary:",
            2: "Please read the following text:{document}\nProvide a summary:",
        },
        shots=(0, 1, 2, 4),
        ficl_shots=(1, 2),
    ),
    "question": TaskSpec(
        name="question",
        study_name="question",
        kind="generation",
        inputs=("context", "answer"),
        target="question",
        study_fields={"input": "context", "answer": "answer", "output": "question"},
        templates={
            1: "### Input:\n{context}\n### Answer:\n{answer}\n### Question:",
            2: "Given the context:{context}\nAnd the answer:{answer}\nGenerate a suitable question:",
        },
        shots=(0, 1, 2, 4),
        ficl_shots=(1, 2),
    ),
    "sentiment": TaskSpec(
        name="sentiment",
        study_name="sentiment",
        kind="classification",
        inputs=("text",),
        target="label",
        study_fields={"input": "text", "output": "label"},
        templates={
            1: "### Input:\n{text}\n### Sentiment:",
            2: "Analyze the sentiment of the following text:{text}\nSentiment:",
        },
        labels=("positive", "negative"),
        shots=(0, 2, 4, 6),
        ficl_shots=(2, 4),
    ),
    "paraphrase": TaskSpec(
        name="paraphrase",
        study_name="detection",
        kind="classification",
        inputs=("sentence1", "sentence2"),
        target="label",
        study_fields={"input_1": "sentence1", "input_2": "sentence2", "output": "label"},
        templates={
            1: "### Input_1:\n{sentence1}\n### Input_2:\n{sentence2}\n### Paraphrase Classification:",
            2: "Let's compare the two sentences: Sentence_1:{sentence1}\nSentence_2:{sentence2}\n"
            "Are they paraphrasing?:",
        },
        labels=("yes", "no"),
        shots=(0, 2, 4, 6),
        ficl_shots=(2, 4),
    ),
    "nli": TaskSpec(
        name="nli",
        study_name="inference",
        kind="classification",
        inputs=("premise", "hypothesis"),
        target="label",
        study_fields={"input_1": "premise", "input_2": "hypothesis", "output": "label"},
        templates={
            1: "### Input_1:\n{premise}\n### Input_2:\n{hypothesis}\n### Inference:",
            2: "Consider the following texts: Text 1:{premise}\nText 2:{hypothesis}\nThe relation is ",
        },
        labels=("entailment", "neutral", "contradiction"),
        shots=(0, 3, 5, 7),
        ficl_shots=(3, 5),
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}") from None


def render_prompt(task: str | TaskSpec, item: Mapping[str, str], prompt: int = 1) -> str:
    """The query prompt for one item (no target)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if prompt not in spec.templates:
        raise ValueError(f"unknown prompt {prompt!r}: expected one of {PROMPT_IDS}")
    # format_map parses only the template, so braces inside the item's text are inserted verbatim.
    return spec.templates[prompt].format_map(item)


def render_target(task: str | TaskSpec, item: Mapping[str, str]) -> str:
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    return str(item[spec.target])


def render_demo(
    task: str | TaskSpec, item: Mapping[str, str], prompt: int = 1, target_delimiter: str = TARGET_DELIMITER
) -> str:
    """One demonstration: prompt + target + blank line (lm-eval's few-shot layout)."""
    return render_prompt(task, item, prompt) + target_delimiter + render_target(task, item) + FEWSHOT_DELIMITER


def render_context(
    task: str | TaskSpec,
    item: Mapping[str, str],
    demos: Sequence[Mapping[str, str]] = (),
    prompt: int = 1,
    target_delimiter: str = TARGET_DELIMITER,
) -> str:
    """k demonstrations, then the query prompt: exactly the context lm-eval builds for the item."""
    return "".join(render_demo(task, d, prompt, target_delimiter) for d in demos) + render_prompt(task, item, prompt)


# ---------------------------------------------------------------- lm-eval task names

HARNESS_PREFIX = "genft_"


def task_name(task: str, dataset: str, prompt: int = 1) -> str:
    """The lm-eval task of (task, data set, prompt): genft_<task>_<dataset>[_p<prompt>] (harness_tasks/)."""
    return f"{HARNESS_PREFIX}{task}_{dataset}" + ("" if prompt == 1 else f"_p{prompt}")


def parse_task_name(name: str) -> tuple[str, str, int]:
    """(task, data set, prompt) of an lm-eval task name that `task_name` built; ValueError for any other name."""
    m = re.fullmatch(rf"{HARNESS_PREFIX}([a-z]+)_(\w+?)(?:_p(\d+))?", name)
    parsed = (m.group(1), m.group(2), int(m.group(3) or 1)) if m else None
    if parsed is None or parsed[0] not in TASKS or task_name(*parsed) != name:
        raise ValueError(f"{name!r} is not a genft lm-eval task name (genft_<task>_<dataset>[_p<prompt>], task one "
                         f"of {', '.join(TASKS)})")
    return parsed


def primary_metric_of(name: str) -> str:
    """The primary metric (`TaskSpec.primary_metric`) of a genft lm-eval task name."""
    return get_task(parse_task_name(name)[0]).primary_metric
