"""The study's evaluation protocol, for comparison with the paper (the faithful mode), as data and rules.

genft's default protocol ("clean") drops the release's defective items and scores every test item.  The study
protocol ("study"; `genft data import-study --protocol study`, a suite's `data.protocol: study`) reproduces
what the study's evaluation code (evaluate_cross.py and indicator_cross.py at the pinned commit) did:

- test items: the first 250 of each test file (`prompt_lst[0:250]`), for every file including CNN/DM, whose
  file holds 382 items (the code scores 250 of them);
- defective items kept: gold "-" (MNLI, MNLI mismatched, GPT3-NLI) is never a predicted label, so the study's
  accuracy counts such an item wrong (it stays in the denominator); items with an empty text are scored as
  they are (15 of TweetQA's first 250 items have an empty *context*: the model is prompted with nothing before
  "### Answer:", and its question is scored against the reference as usual);
- RTE 2-way, scored over the three NLI labels (not_entailment -> "neutral", as released).

The prompts' tokens are the study's (`StudyQuirks`; genft.study_tokens builds the ids, genft.protocol_lm gives
them to every backend): the literal text "<s> " before a 0-shot prompt, no special tokens for classification,
the tokenizer's own (vLLM's BOS) for generation, the context's trailing white space kept in the context and the
label scored as a bare word (the study's fixed label ids), everything tokenized as Llama-2's 2023 tokenizer did.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .layout import CLEAN, STUDY, check_protocol_name, read_protocol

STUDY_SCORED_ITEMS = 250  # evaluate_cross.py: `prompt_lst = prompt_lst[0:250]` for every test file


@dataclass(frozen=True)
class StudyQuirks:
    """What the study's evaluation code did to a prompt before its model saw it (evaluate_cross.py).

    zero_shot_prefix: at 0 shots the code prepends this literal text, "<s> " (Llama-2's BOS string, then a space),
        whatever the model: for Llama-2 "<s>" is the BOS token and the space a lone "▁" token; for a model whose
        tokenizer has no "<s>" token it is four characters of text.
    classification_special_tokens: classification tokenizes with add_special_tokens=False: no BOS of the
        tokenizer's own (so with demonstrations a Llama-2 model saw no BOS at all).
    generation_special_tokens: generation went through vLLM, whose encoding adds the tokenizer's special tokens
        (Llama-2's BOS): at 0 shots [BOS, BOS, "▁", ...], with demonstrations [BOS, ...].
    """

    zero_shot_prefix: str = "<s> "
    classification_special_tokens: bool = False
    generation_special_tokens: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


STUDY_QUIRKS = StudyQuirks()


def quirks_for(protocol: str) -> StudyQuirks | None:
    """The study's quirks for the study protocol; None for clean (lm-eval's and the tokenizer's own defaults)."""
    return STUDY_QUIRKS if check_protocol_name(protocol) == STUDY else None


def study_prompt_text(context: str, shots: int, kind: str, quirks: StudyQuirks = STUDY_QUIRKS) -> tuple[str, bool]:
    """The text the study's code tokenized for a context (k demonstrations + the query prompt), and whether the
    tokenizer added its special tokens (its BOS) itself: (text, add_special_tokens).

    kind: "classification" (HF tokenizer, add_special_tokens=False) or "generation" (vLLM, which adds BOS)."""
    if kind not in ("classification", "generation"):
        raise ValueError(f"unknown kind {kind!r}: expected classification or generation")
    add_special = quirks.generation_special_tokens if kind == "generation" else quirks.classification_special_tokens
    return (quirks.zero_shot_prefix + context if shots == 0 else context), add_special


__all__ = ["CLEAN", "STUDY", "STUDY_SCORED_ITEMS", "StudyQuirks", "STUDY_QUIRKS", "quirks_for", "study_prompt_text",
           "read_protocol"]
