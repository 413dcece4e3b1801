"""What the genft-hf tests (tests/test_backend_*.py) compare with: two 'tasks' with their own demonstrations,
items and labels, the log-likelihood and greedy requests built from them, lm-eval's own `hf` paired with
genft-hf (genft.backend) on one model, and the comparison of their log-likelihoods.

The models are tiny random ones whose weights are re-drawn with a larger scale ("lively", `_livened`), so that
greedy outputs vary from token to token (the stock tiny model repeats one token) and stop sequences get
exercised; the fixtures that make them (`lively`, `lively_swa`) and the pair on the livened Llama (`models`)
are in tests/conftest.py.
"""
from __future__ import annotations

import math

import torch

from lm_eval.api.instance import Instance

from genft.backend import GenftHFLM

TOL = 1e-4

DEMOS_A = (
    "### Input:\nthe movie was great fun from start to end\n### Sentiment:positive\n\n"
    "### Input:\nboring, slow and far too long\n### Sentiment:negative\n\n"
)
DEMOS_B = (
    "### Input_1:\nA man is playing a guitar on stage.\n### Input_2:\nA person plays music.\n### Inference:entailment\n\n"
    "### Input_1:\nThe cat sleeps.\n### Input_2:\nThe cat is running fast.\n### Inference:contradiction\n\n"
)
ITEMS_A = ["a wonderful film", "terrible acting, bad plot and worse music", "it was ok I guess", "loved it",
           "the restaurant food was cold"]
ITEMS_B = [("A dog runs in the park.", "An animal is outside."), ("Two kids play chess.", "Nobody is playing."),
           ("The sun is hot.", "It is summer.")]
LABELS_A = ["positive", "negative", "pos", "neg"]
LABELS_B = ["entailment", "neutral", "contradiction", "ent", "neut", "contr"]


def _livened(src: str, out) -> str:
    """`src` with every weight but the norms re-drawn at std 0.15 (seeded): varied greedy text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def _pair(pretrained: str, batch_size: int = 4, gen_batch_size: int | None = None, **kwargs):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=pretrained, device="cpu", batch_size=batch_size, **kwargs)
    fast = GenftHFLM(pretrained=pretrained, device="cpu", batch_size=batch_size, gen_batch_size=gen_batch_size,
                     **kwargs)
    return hf, fast


def _ll_requests() -> list[Instance]:
    """Two 'tasks' with their own demonstrations, several items, labels + first-token prefixes, edge cases."""
    reqs = []
    for i, text in enumerate(ITEMS_A):
        ctx = DEMOS_A + f"### Input:\n{text}\n### Sentiment:"
        reqs += [Instance("loglikelihood", {}, (ctx, lab), i) for lab in LABELS_A]
    for i, (a, b) in enumerate(ITEMS_B):
        ctx = DEMOS_B + f"### Input_1:\n{a}\n### Input_2:\n{b}\n### Inference:"
        reqs += [Instance("loglikelihood", {}, (ctx, lab), 100 + i) for lab in LABELS_B]
    # HFLM's edge cases: a trailing space moves to the continuation; an empty context gets the prefix token;
    # space-prefixed labels; a duplicate request; a context without any demonstrations.
    reqs.append(Instance("loglikelihood", {}, (DEMOS_A + "### Input:\nfine\n### Sentiment: ", "positive"), 200))
    reqs.append(Instance("loglikelihood", {}, ("", "positive review"), 201))
    reqs.append(Instance("loglikelihood", {}, (DEMOS_A + "### Input:\nfine\n### Sentiment:", " negative"), 202))
    reqs.append(Instance("loglikelihood", {}, (DEMOS_A + "### Input:\nfine\n### Sentiment:", " negative"), 203))
    reqs.append(Instance("loglikelihood", {}, ("Question: is it good?\nAnswer:", "yes"), 204))
    return reqs


def _gen_requests(contexts, until, max_gen_toks=24) -> list[Instance]:
    kw = {"until": list(until), "max_gen_toks": max_gen_toks, "do_sample": False, "temperature": 0.0}
    return [Instance("generate_until", {}, (c, dict(kw)), i) for i, c in enumerate(contexts)]


def _assert_same_ll(a, b, tol=TOL):
    assert len(a) == len(b)
    for i, ((la, ga), (lb, gbool)) in enumerate(zip(a, b)):
        assert math.isfinite(lb)
        assert abs(la - lb) < tol, (i, la, lb)
        assert ga == gbool, (i, ga, gbool)


def save_random_lora(base: str, out, targets: list[str], scale: float, seed: int) -> str:
    """A LoRA adapter (r 4, alpha 8, no dropout) on `targets` of the model in `base`, with a random nonzero B
    (normal * scale, seeded) so that it changes the outputs, saved in `out`; returns its path."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                      task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(out)
    return str(out)
