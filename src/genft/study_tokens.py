"""The token ids the study's model received, for any tokenizer (the study protocol; genft.data.protocol).

The study's code tokenized a prompt's text in one call (add_special_tokens=False for classification, vLLM's
encoding with the tokenizer's special tokens for generation) and scored fixed label ids at the position after it.
Two things make that more than "tokenize the same string" on genft's stack:

- Llama-2's tokenizer of 2023 (sentencepiece's rule, transformers' `legacy` behaviour) put a "▁" before every
  stretch of text between special tokens and wrote every space as "▁": "<s> ### Input" was [<s>, "▁", "▁###",
  "▁Input"].  transformers 5 rebuilds Llama tokenizers around a Metaspace pre-tokenizer that swallows that space
  ([<s>, "▁###", ...]), and with legacy=False adds no "▁" after a special token at all ([<s>, "##", "#", ...]).
  For a sentencepiece-style BPE tokenizer genft therefore runs the tokenizer's own BPE model on the text as the
  2023 tokenizer prepared it, whatever the tokenizer's pre-tokenizer or `legacy` setting; any other tokenizer
  (byte-level BPE such as GPT-2's or SmolLM2's) tokenizes the text itself, as the study's call would have.
- The study kept a context's trailing white space in the context and scored the label's bare first token after
  it: for NLI Prompt-2, which ends in "The relation is ", the input ends in a lone "▁" and the scores are those
  of "ent" / "neut" / "contr" (Llama-2 ids 296 / 17821 / 9996, the ids the study hard-coded for Prompt-1), not
  of "▁ent" / "▁neutral" / "▁contradiction" as its own Prompt-2 demonstrations spell the labels.  lm-eval (the
  clean protocol) moves that space into the label instead.
"""
from __future__ import annotations

import re

from .data.protocol import STUDY_QUIRKS, StudyQuirks, study_prompt_text

SPIECE = "▁"  # sentencepiece's space mark
# A task-manager metadata key set by genft.harness, which evaluates study-protocol data with these ids: the task
# loader refuses such data without it (plain lm_eval would tokenize the prompts its own way).
APPLIED_KEY = "genft_study_tokens"


def sentencepiece_prefix(tokenizer) -> str | None:
    """For a sentencepiece-style BPE tokenizer (spaces written as "▁"), the text it puts before a stretch of text:
    "▁" (Llama-1/2, Mistral: a dummy prefix) or "" (none); None for any other tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "BPE":
        return None
    pre, norm = backend.pre_tokenizer, backend.normalizer
    if pre is not None and type(pre).__name__ == "Metaspace":
        if pre.replacement != SPIECE:
            return None
        return "" if str(pre.prepend_scheme) == "never" else SPIECE
    described = repr(norm) if norm is not None else ""
    if pre is None and "Replace" in described and SPIECE in described:  # the normalizer form of 2023 tokenizer.json
        return SPIECE if "Prepend" in described else ""
    return None


def _special_pattern(tokenizer) -> re.Pattern | None:
    specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None


def text_ids(tokenizer, text: str) -> list[int]:
    """The ids of `text` without added special tokens (add_special_tokens=False), as the study's tokenizer gave
    them: special-token strings in the text ("<s>") are their tokens, every other stretch of text is encoded on
    its own, by a sentencepiece-style tokenizer's BPE model as prefix + the text with its spaces as "▁"."""
    prefix = sentencepiece_prefix(tokenizer)
    if prefix is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    model, pattern = tokenizer.backend_tokenizer.model, _special_pattern(tokenizer)
    ids: list[int] = []
    for i, piece in enumerate(pattern.split(text) if pattern else [text]):
        if i % 2:  # a special token's string (the split's captured group)
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        elif piece:
            ids += [t.id for t in model.tokenize(prefix + piece.replace(" ", SPIECE))]
    return ids


def bare_ids(tokenizer, text: str) -> list[int]:
    """The ids of `text` as a bare word that continues a context (no "▁" prefix): a label's ids in the study."""
    if sentencepiece_prefix(tokenizer) is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [t.id for t in tokenizer.backend_tokenizer.model.tokenize(text.replace(" ", SPIECE))] if text else []


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds around a text by itself (Llama-2: ([BOS], []))."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    raise ValueError(f"the tokenizer's encoding of 'a' with special tokens, {full}, does not contain {plain}")


def context_ids(tokenizer, context: str, shots: int, kind: str, quirks: StudyQuirks = STUDY_QUIRKS) -> list[int]:
    """The ids the study's model received for a context (k demonstrations + the query prompt, as genft renders
    it): kind "classification" (scored at the position after it) or "generation" (decoded from it)."""
    text, add_special = study_prompt_text(context, shots, kind, quirks)
    ids = text_ids(tokenizer, text)
    if add_special:
        before, after = special_affixes(tokenizer)
        ids = before + ids + after
    if not ids:
        raise ValueError(f"protocol study: the context {context[:40]!r} has no tokens")
    return ids


def first_label_text(tokenizer, label: str) -> str:
    """The text of a label's first bare token (Llama-2: "entailment" -> "ent", id 296): scoring it as a choice
    (bare_ids gives that one id back) is the study's first-token rule."""
    ids = bare_ids(tokenizer, label)
    if not ids:
        raise ValueError(f"label {label!r} has no tokens")
    if sentencepiece_prefix(tokenizer) is None:
        text = tokenizer.decode(ids[:1])
    else:
        text = tokenizer.convert_ids_to_tokens(ids[0]).replace(SPIECE, " ")
    if bare_ids(tokenizer, text) != ids[:1]:
        raise ValueError(f"label {label!r}: its first token (id {ids[0]}) does not come back from its text {text!r}; "
                         "the study's first-token rule cannot be scored as a choice with this tokenizer")
    return text
