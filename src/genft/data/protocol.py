"""The study's evaluation protocol, for comparison with the paper (the faithful mode), as data and toggles.

genft's default protocol ("clean") drops the release's defective items and scores every test item.  The study
protocol ("study"; `genft data import-study --protocol study`, a suite's `data.protocol: study`) reproduces
what the study's evaluation code (evaluate_cross.py and indicator_cross.py at the pinned commit) did:

- test items: the first 250 of each test file (`prompt_lst[0:250]`), for every file including CNN/DM, whose
  file holds 382 items (the issue's "382 for CNN/DM" is the file's size; the code scores 250 of them);
- defective items kept: gold "-" (MNLI, MNLI mismatched, GPT3-NLI) is never a predicted label, so the study's
  accuracy counts such an item wrong (it stays in the denominator); items with an empty text are scored as
  they are (an empty TweetQA reference scores ROUGE 0);
- RTE 2-way, scored over the three NLI labels (not_entailment -> "neutral", as released).

Prompt quirks that change scores are toggles (`StudyQuirks`), applied to every request of a study-protocol suite by
genft.protocol_lm (the BOS written into the text, tokenizers told to add none); `study_prompt_text` is the rule.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .layout import CLEAN, STUDY, check_protocol_name, read_protocol

STUDY_SCORED_ITEMS = 250  # evaluate_cross.py: `prompt_lst = prompt_lst[0:250]` for every test file


@dataclass(frozen=True)
class StudyQuirks:
    """What the study's evaluation code did to the prompt, as switches (all on = the study; all off = genft's clean
    default, where lm-eval / the model's tokenizer decide special tokens).

    zero_shot_bos_text: at 0 shots the study prepends the literal text "<s> " (Llama-2's BOS string, then a space)
        to the prompt.  Classification tokenizes with add_special_tokens=False, so the model sees [BOS, "▁", ...];
        generation goes through vLLM, which adds its own BOS: [BOS, BOS, "▁", ...].
    no_bos_with_demos: with k > 0 demonstrations, classification tokenizes the context with add_special_tokens=False
        and no "<s>" text: the model sees no BOS at all.  (Generation with demos: vLLM's one BOS, the usual.)
    first_token_rule: classification predicts the label whose first token has the highest score at the first
        generated position (genft's `acc_first`); `acc` (summed log-likelihood) is not the study's rule.
    generation_cut: the prediction is stripped and cut at the first blank line before ROUGE-L.
    """

    zero_shot_bos_text: bool = True
    no_bos_with_demos: bool = True
    first_token_rule: bool = True
    generation_cut: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


STUDY_QUIRKS = StudyQuirks()
NO_QUIRKS = StudyQuirks(False, False, False, False)


def quirks_for(protocol: str) -> StudyQuirks:
    return STUDY_QUIRKS if check_protocol_name(protocol) == STUDY else NO_QUIRKS


def study_prompt_text(context: str, shots: int, kind: str, bos_text: str = "<s>",
                      quirks: StudyQuirks = STUDY_QUIRKS) -> tuple[str, bool]:
    """The text the study's code tokenized for a context (k demonstrations + the query prompt), and whether the
    tokenizer adds its special tokens (its BOS) itself: (text, add_special_tokens).

    kind: "classification" (HF tokenizer, add_special_tokens=False) or "generation" (vLLM, which adds BOS)."""
    if kind not in ("classification", "generation"):
        raise ValueError(f"unknown kind {kind!r}: expected classification or generation")
    add_special = kind == "generation" or not quirks.no_bos_with_demos
    if shots == 0 and quirks.zero_shot_bos_text:
        return f"{bos_text} {context}", add_special
    return context, add_special



__all__ = ["CLEAN", "STUDY", "STUDY_SCORED_ITEMS", "StudyQuirks", "STUDY_QUIRKS", "NO_QUIRKS", "quirks_for",
           "study_prompt_text", "read_protocol"]
