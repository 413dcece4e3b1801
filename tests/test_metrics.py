import math
import sys

import pytest
from lm_eval.tasks._yaml_loader import load_yaml

from conftest import REPO
from genft import metrics
from genft.prompts import get_task

sys.path.insert(0, str(REPO / "harness_tasks"))
import utils as task_utils  # noqa: E402  (harness_tasks/utils.py, the lm-eval tasks' scoring functions)


def test_rules_differ_when_labels_split_into_several_tokens():
    nli = get_task("nli")
    # Full labels: entailment = ent + ail + ment is penalised for its three tokens, so "neutral" wins the
    # summed rule; but "ent" is the most probable first token, so the study's rule picks entailment.
    full = [math.log(0.5) + math.log(0.3) + math.log(0.3), math.log(0.2), math.log(0.1) + math.log(0.5)]
    first = [math.log(0.5), math.log(0.2), math.log(0.1)]
    s = metrics.classification_scores(nli, gold=0, lls=full + first)
    assert s["acc"] == 0.0 and s["pred_neutral"] == 1.0
    assert s["acc_first"] == 1.0 and s["predfirst_entailment"] == 1.0
    assert s["gold_entailment"] == 1.0 and s["gold_neutral"] == 0.0
    # acc_norm divides by characters: entailment -0.31/char, neutral -0.230/char, contradiction -0.2305/char.
    assert s["acc_norm"] == 0.0
    s = metrics.classification_scores(nli, gold=2, lls=full + first)
    assert (s["acc"], s["acc_norm"], s["acc_first"]) == (0.0, 0.0, 0.0)


def test_classification_scores_need_both_blocks():
    with pytest.raises(ValueError, match="expected 4 log-likelihoods"):
        metrics.classification_scores(get_task("sentiment"), 0, [0.0, -1.0])


def test_metric_names_cover_the_scores():
    spec = get_task("paraphrase")
    assert sorted(metrics.classification_metric_names(spec)) == sorted(
        metrics.classification_scores(spec, 1, [-1.0, -2.0, -1.0, -2.0]))


def test_rouge_on_a_hand_computed_case():
    # reference 4 tokens, prediction 3 tokens, LCS "the cat sat" = 3: P=1, R=3/4, F=6/7.
    s = metrics.generation_scores("The cat sat down", " the cat sat\n\nignored after a blank line")
    assert s["rougeL"] == pytest.approx(6 / 7)
    assert s["rouge1"] == pytest.approx(6 / 7)
    # bigrams: pred {the cat, cat sat}, ref {the cat, cat sat, sat down}: P=1, R=2/3, F=0.8
    assert s["rouge2"] == pytest.approx(0.8)
    assert metrics.generation_scores("a b", "\n\n")["rougeL"] == 0.0


def test_clean_generation_strips_then_cuts_at_the_first_blank_line():
    assert metrics.clean_generation("\n  What did he do?\nMore\n\n### Input:") == "What did he do?\nMore"


class FakeTokenizer:
    """Word-piece toy: 'ent','ail','ment' and whole words; spaces attach to the following piece."""

    is_fast = True
    pieces = ["entail", "ent", "ail", "ment", "neutral", ":", " ", "is", "x"]

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        ids, offsets, i = [], [], 0
        while i < len(text):
            start = i
            if text[i] == " " and i + 1 < len(text):
                i += 1
            piece = next(p for p in self.pieces if text.startswith(p, i))
            i += len(piece)
            ids.append(self.pieces.index(piece))
            offsets.append((start, i))
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out


def test_first_token_text_follows_lm_eval_tokenization():
    tok = FakeTokenizer()
    assert metrics.first_token_text(tok, "x:", "entailment") == "entail"
    assert metrics.first_token_text(tok, "x:", "neutral") == "neutral"
    # Trailing white space of the context moves into the continuation (lm-eval's hf model does this).
    assert metrics.first_token_text(tok, "x is ", "entailment") == "entail"
    # With a delimiter, only the label's own characters are returned.
    assert metrics.first_token_text(tok, "x:", " entailment", skip=1) == "entail"


def test_first_token_text_on_the_tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    for label in ("entailment", "contradiction", "positive", "no"):
        first = metrics.first_token_text(tok, "### Inference:", label)
        assert label.startswith(first) and first
        whole = tok("### Inference:" + first, add_special_tokens=False)["input_ids"]
        ctx = tok("### Inference:", add_special_tokens=False)["input_ids"]
        assert len(whole) == len(ctx) + 1  # the prefix is exactly one token after the context


def test_an_output_starting_with_a_blank_line_is_stripped_before_it_is_cut():
    """The study strips, then cuts at the first blank line: a leading blank line must not empty the output."""
    out = "\n\nWhat did he do?\n\n### Input: the next demo"
    assert metrics.clean_generation(out) == "What did he do?"
    assert metrics.generation_scores("What did he do?", out)["rougeL"] == 1.0


def test_the_generation_tasks_do_not_cut_before_the_metric_strips():
    """A stop sequence "\\n\\n" in the task would cut the raw output before it is stripped (lm-eval splits the
    generation at the stop): the shared generation template sets none, and scoring strips, then cuts."""
    cfg = load_yaml(REPO / "harness_tasks" / "_genft_generation.yaml", resolve_func=False)
    assert cfg["generation_kwargs"]["until"] == [] and cfg["generation_kwargs"]["max_gen_toks"] == 60
    doc = {task_utils.TARGET: "What did he do?"}
    assert task_utils.process_generation(doc, ["\n\nWhat did he do?\n\nmore"])["rougeL"] == 1.0


def test_label_metric_names_are_the_ones_the_task_yamls_declare():
    """The one helper that names per-label metrics builds exactly what harness_tasks/ asks lm-eval to aggregate,
    and what classification_scores returns per item; metric_label reads each name back."""
    import yaml

    from genft.metrics import GOLD, LABEL_RULES, PREDFIRST, classification_metric_names, label_metric, metric_label
    from genft.prompts import TASKS

    root = REPO / "harness_tasks"
    for spec in TASKS.values():
        if not spec.is_classification:
            continue
        declared = [m["metric"] for m in yaml.safe_load((root / spec.name / f"_{spec.name}.yaml").read_text())
                    ["metric_list"]]
        built = {label_metric(rule, lab) for rule in LABEL_RULES for lab in spec.labels}
        assert built <= set(declared) and declared == classification_metric_names(spec)
        assert set(metrics.classification_scores(spec, 0, [0.0] * (2 * len(spec.labels)))) == set(declared)
        for lab in spec.labels:
            assert metric_label(GOLD, label_metric(GOLD, lab)) == lab
            assert metric_label(GOLD, label_metric(PREDFIRST, lab)) is None
    with pytest.raises(ValueError, match="unknown label rule"):
        label_metric("predfirst_", "yes")
    assert metric_label(GOLD, "gold_") is None and metric_label(GOLD, "acc") is None
