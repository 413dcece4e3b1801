"""Scores: the two classification rules, ROUGE for generation, and the tokenization they rest on.

Classification is scored two ways on the same requests:
  acc        lm-eval's rule: the label word with the highest summed log-likelihood after the prompt;
  acc_norm   the same, divided by the label's length in characters (lm-eval's acc_norm);
  acc_first  the study's rule: the label whose FIRST token is most probable at the first position.
They disagree when labels split into several tokens ("entailment" vs "neutral"): the summed rule
penalises long labels, the first-token rule ignores everything after the first token.
"""
from __future__ import annotations

from typing import Sequence

from rouge_score import rouge_scorer

from .prompts import FEWSHOT_DELIMITER, TaskSpec

_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's hf model moves the context's trailing white space into the continuation; do the same."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def first_token_text(tokenizer, context: str, continuation: str, skip: int = 0) -> str:
    """The part of `continuation` (after its first `skip` characters, the target delimiter) that the
    first continuation token covers, when context + continuation is tokenized as lm-eval's hf model does.
    Scoring that string as a choice gives the log-probability of the label's first token.
    """
    ctx, cont = split_context(context, continuation)
    moved = len(cont) - len(continuation)  # white space moved over from the context
    label_start = len(ctx) + moved + skip  # where the label itself begins in the whole string
    whole = ctx + cont
    n_ctx = len(tokenizer(ctx, add_special_tokens=False)["input_ids"])
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(whole, add_special_tokens=False, return_offsets_mapping=True)
        for _, end in enc["offset_mapping"][n_ctx:]:
            if end > label_start:
                return whole[label_start:end]
    else:  # slow tokenizers have no offsets: grow the decoded continuation token by token
        ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
        for i in range(n_ctx + 1, len(ids) + 1):
            text = tokenizer.decode(ids[n_ctx:i])
            if len(text) > moved + skip:
                return whole[label_start : label_start + len(text) - moved - skip]
    return whole[label_start:]


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


# Per-item label metrics of a classification cell: 1.0 where a rule gives the label, else 0.0.  Their names are
# "<rule>_<label>" (the lm-eval task YAMLs list them, harness_tasks/_generate_configs.py): label_metric is the one
# place that builds them and metric_label the one that reads them back.
PRED, PREDFIRST, GOLD = "pred", "predfirst", "gold"  # the full-label prediction, the first-token one, the gold label
LABEL_RULES = (PRED, PREDFIRST, GOLD)


def label_metric(rule: str, label: str) -> str:
    """The name of the per-item metric that is 1.0 where `rule` (PRED, PREDFIRST or GOLD) gives `label`."""
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}: one of {', '.join(LABEL_RULES)}")
    return f"{rule}_{label}"


def metric_label(rule: str, metric: str) -> str | None:
    """The label of a `label_metric(rule, label)` name, or None when `metric` is not one of `rule`'s."""
    prefix = label_metric(rule, "")
    return metric[len(prefix):] if metric.startswith(prefix) and len(metric) > len(prefix) else None


def classification_scores(spec: TaskSpec, gold: int, lls: Sequence[float]) -> dict[str, float]:
    """Per-item scores from the log-likelihoods of the choices: label words, then their first tokens."""
    n = len(spec.labels)
    if len(lls) != 2 * n:
        raise ValueError(f"expected {2 * n} log-likelihoods (labels, then first tokens), got {len(lls)}")
    full, first = list(lls[:n]), list(lls[n:])
    pred = _argmax(full)
    pred_norm = _argmax([ll / len(lab) for ll, lab in zip(full, spec.labels)])
    pred_first = _argmax(first)
    out = {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold), "acc_first": float(pred_first == gold)}
    for i, lab in enumerate(spec.labels):
        # The predicted-label distribution shows a model that answers one label for everything.
        out[label_metric(PRED, lab)] = float(pred == i)
        out[label_metric(PREDFIRST, lab)] = float(pred_first == i)
        out[label_metric(GOLD, lab)] = float(gold == i)
    return out


def classification_metric_names(spec: TaskSpec) -> list[str]:
    names = ["acc", "acc_norm", "acc_first"]
    for rule in LABEL_RULES:
        names += [label_metric(rule, lab) for lab in spec.labels]
    return names


def clean_generation(text: str) -> str:
    """The study's post-processing: strip, then cut at the first blank line."""
    return text.strip().split(FEWSHOT_DELIMITER, 1)[0].strip()


def generation_scores(reference: str, prediction: str) -> dict[str, float]:
    scores = _ROUGE.score(reference, clean_generation(prediction))
    return {name: s.fmeasure for name, s in scores.items()}
