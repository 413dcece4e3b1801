"""genft-hf (genft.backend) against lm-eval's own `hf` model: same log-likelihoods, same greedy texts.

Fast tests use a tiny random Llama whose weights are re-drawn with a larger scale ("lively"), so that greedy
outputs vary from token to token (the stock tiny model repeats one token) and stop sequences get exercised.
The same checks run on genft's tiny sliding-window model (`tiny-swa`: Gemma-2-style, 16-token windows mixed
with full layers, softcaps), whose test contexts are several windows long.
Slow tests (-m slow) compare the two backends with SmolLM2-135M on the study's real test sets and on the
suites' generation cells.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm_eval.api.instance import Instance

from conftest import REPO
from genft.backend import GenftHFLM, common_prefix_len, plan_prefix_groups
from genft.precision import cpu_bf16_missing

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


# --------------------------------------------------------------------------- fixtures


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


@pytest.fixture(scope="module")
def lively(tiny_model, tmp_path_factory) -> str:
    """The tiny Llama, livened (see _livened)."""
    return _livened(tiny_model, tmp_path_factory.mktemp("lively"))


@pytest.fixture(scope="module")
def lively_swa(tmp_path_factory) -> str:
    """genft's tiny sliding-window model (Gemma-2-style: 16-token windows, full layers, softcaps), livened."""
    from genft.models import prepare

    return _livened(str(prepare("tiny-swa")), tmp_path_factory.mktemp("lively-swa"))


@pytest.fixture(scope="module")
def lora_adapter(lively, tmp_path_factory) -> str:
    """A LoRA adapter on the lively model with a random, nonzero B (so that it changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("lora")
    base = AutoModelForCausalLM.from_pretrained(lively)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(out)
    return str(out)


def _pair(pretrained: str, batch_size: int = 4, gen_batch_size: int | None = None, **kwargs):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=pretrained, device="cpu", batch_size=batch_size, **kwargs)
    fast = GenftHFLM(pretrained=pretrained, device="cpu", batch_size=batch_size, gen_batch_size=gen_batch_size,
                     **kwargs)
    return hf, fast


@pytest.fixture(scope="module")
def models(lively):
    return _pair(lively)


# --------------------------------------------------------------------------- requests


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


def _greedy_continuation(hf, context: str, n: int) -> str:
    out = hf.generate_until([Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": n,
                                                                           "do_sample": False}), 0)], disable_tqdm=True)
    return out[0]


def _gen_requests(contexts, until, max_gen_toks=24) -> list[Instance]:
    kw = {"until": list(until), "max_gen_toks": max_gen_toks, "do_sample": False, "temperature": 0.0}
    return [Instance("generate_until", {}, (c, dict(kw)), i) for i, c in enumerate(contexts)]


def _assert_same_ll(a, b, tol=TOL):
    assert len(a) == len(b)
    for i, ((la, ga), (lb, gbool)) in enumerate(zip(a, b)):
        assert math.isfinite(lb)
        assert abs(la - lb) < tol, (i, la, lb)
        assert ga == gbool, (i, ga, gbool)


# --------------------------------------------------------------------------- planning


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([5], [6]) == 0


def test_plan_prefix_groups_finds_each_shared_prefix():
    pa, pb = list(range(100, 160)), list(range(300, 340))
    seqs = [pa + [1, i] for i in range(5)] + [pb + [2, i, i] for i in range(4)] + [[7, 8, 9], [7, 8, 10]]
    groups = plan_prefix_groups(seqs, min_prefix=8)
    by_member = {m: p for p, members in groups for m in members}
    assert sorted(by_member) == list(range(len(seqs)))
    assert {by_member[i] for i in range(5)} == {61}  # the demos + the shared "1"
    assert {by_member[i] for i in range(5, 9)} == {41}
    assert by_member[9] == by_member[10] == 0  # a 2-token prefix is not worth sharing
    for p, members in groups:  # every member keeps at least one token after the prefix
        assert all(len(seqs[m]) > p and seqs[m][:p] == seqs[members[0]][:p] for m in members)


def test_plan_prefix_groups_keeps_one_token():
    """A sequence that is all prefix keeps its last token out of the shared prefix (19 of its 20), so that it
    still has a token to score; when that leaves less than min_prefix, nothing is shared."""
    seqs = [[1] * 20, [1] * 20 + [2], [1] * 20 + [3]]
    assert plan_prefix_groups(seqs, min_prefix=4) == [(19, [0, 1, 2])]
    assert plan_prefix_groups(seqs, min_prefix=4, keep=3) == [(17, [0, 1, 2])]
    assert plan_prefix_groups([[1] * 4, [1] * 4 + [2]], min_prefix=4) == [(0, [0, 1])]
    assert plan_prefix_groups([], min_prefix=4) == []


# --------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_matches_hf(models):
    hf, fast = models
    reqs = _ll_requests()
    # A continuation that is the greedy text, so that is_greedy=True is checked too.
    # (a generated text that re-tokenizes to the generated tokens: some contexts end in byte fragments)
    for text in ITEMS_A + [a for a, _ in ITEMS_B]:
        ctx = DEMOS_A + f"### Input:\n{text}\n### Sentiment:"
        greedy = _greedy_continuation(hf, ctx, 2)
        if greedy and hf.loglikelihood([Instance("loglikelihood", {}, (ctx, greedy), 0)], disable_tqdm=True)[0][1]:
            break
    else:
        pytest.fail("no greedy continuation round-trips through the tokenizer")
    reqs.append(Instance("loglikelihood", {}, (ctx, greedy), 300))
    want = hf.loglikelihood(reqs, disable_tqdm=True)
    got = fast.loglikelihood(reqs, disable_tqdm=True)
    _assert_same_ll(want, got)
    assert got[-1][1] is True
    assert any(not g for _, g in got)
    # Multi-token labels really are multi-token here (the trie path is exercised).
    assert max(len(fast.tok_encode(lab, add_special_tokens=False)) for lab in LABELS_B) > 1


def test_each_string_is_tokenized_once_with_hflms_tokens(models, monkeypatch):
    hf, fast = models
    reqs = _ll_requests()
    seen = {}
    for lm in (hf, fast):  # the token pairs each hands to _loglikelihood_tokens
        monkeypatch.setattr(lm, "_loglikelihood_tokens", lambda r, _lm=lm, **kw: seen.setdefault(_lm, r) and [])
    encoded = []
    orig = fast.tokenizer.encode
    monkeypatch.setattr(fast.tokenizer, "encode", lambda s, *a, **kw: encoded.append(s) or orig(s, *a, **kw))
    hf.loglikelihood(reqs, disable_tqdm=True)
    fast.loglikelihood(reqs, disable_tqdm=True)
    assert seen[fast] == seen[hf]
    # lm-eval encodes each context again for every label; here every distinct string is encoded once.
    assert len(encoded) == len(set(encoded))
    contexts = {r.args[0].rstrip() for r in reqs if r.args[0]}
    assert len(encoded) < len(reqs) + len(contexts) + 2 < 2 * len(reqs)
    assert fast._tok_memo is None  # the memo lives for one call only


def test_batched_equals_unbatched(lively, models):
    _, fast = models
    one = GenftHFLM(pretrained=lively, device="cpu", batch_size=1)
    reqs = _ll_requests()
    a = one.loglikelihood(reqs, disable_tqdm=True)
    b = fast.loglikelihood(reqs, disable_tqdm=True)
    big = GenftHFLM(pretrained=lively, device="cpu", batch_size=64)
    c = big.loglikelihood(reqs, disable_tqdm=True)
    _assert_same_ll(a, b, tol=1e-5)
    _assert_same_ll(a, c, tol=1e-5)
    gen = _gen_requests([DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + ["hello there"],
                        until=["\n\n"])
    assert one.generate_until(gen, disable_tqdm=True) == big.generate_until(gen, disable_tqdm=True)


def test_prefix_is_computed_once(models):
    _, fast = models
    reqs = [r for r in _ll_requests() if r.idx < 100]  # task A only: 5 items x 4 labels
    fast.stats.clear()
    fast.loglikelihood(reqs, disable_tqdm=True)
    s = fast.stats
    ctx_tokens = [fast.tok_encode(DEMOS_A + f"### Input:\n{t}\n### Sentiment:") for t in ITEMS_A]
    shared = min(common_prefix_len(ctx_tokens[0], c) for c in ctx_tokens)
    assert shared >= len(fast.tok_encode(DEMOS_A)) - 2
    assert s["prefix_forwards"] == 1 and s["prefix_tokens"] == shared
    # One forward for the prefix + one per batch of 4 items (5 items -> 2), whatever the number of labels.
    assert s["forward_calls"] == 1 + math.ceil(len(ITEMS_A) / 4)
    total_hf = sum(len(c) for c in ctx_tokens) * len(LABELS_A)
    assert s["prefix_tokens"] + s["forward_tokens"] < total_hf / 5
    # lm_head only at scored positions: one per item for the one-token labels + the extra label tokens.
    assert s["head_rows"] < 5 * len(ITEMS_A)

    # Generation: the prefix once as well.
    fast.stats.clear()
    fast.generate_until(_gen_requests([DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A], ["\n\n"], 8),
                        disable_tqdm=True)
    assert fast.stats["prefix_forwards"] == 1 and fast.stats["prefix_tokens"] == shared


# --------------------------------------------------------------------------- generate_until


@pytest.mark.parametrize("shared", [True, False])
def test_generate_until_matches_hf(models, shared):
    hf, fast = models
    if shared:
        contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A]
        contexts += [DEMOS_B + f"### Input_1:\n{a}\n### Input_2:\n{b}\n### Inference:" for a, b in ITEMS_B]
    else:
        contexts = [f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + ["hello", "a b c d e f g h i j k"]
    free = hf.generate_until(_gen_requests(contexts, until=[], max_gen_toks=24), disable_tqdm=True)
    assert len(set(free)) > 1
    # Stop sequences that really occur mid-output for some rows (a cut), plus the study's "\n\n".
    stops = {s[len(s) // 2 : len(s) // 2 + 2] for s in free[:3] if len(s) > 6}
    stops = [s for s in stops if s.strip()] or ["e"]
    for until in (["\n\n"], stops, stops[:1] + ["\n\n"]):
        reqs = _gen_requests(contexts, until=until)
        want = hf.generate_until(reqs, disable_tqdm=True)
        got = fast.generate_until(reqs, disable_tqdm=True)
        assert got == want, (until, want, got)
    assert any(len(w) < len(f) for w, f in zip(want, free))  # some outputs were cut by a stop sequence
    fast.stats.clear()
    fast.generate_until(_gen_requests(contexts, until=["\n\n"]), disable_tqdm=True)
    assert fast.stats["prefix_forwards"] == (2 if shared else 0)


def test_generate_until_eos_and_mixed_kwargs(lively, tmp_path):
    """Rows end at EOS at different steps (the generation config's EOS list gets a frequent token), and two
    gen_kwargs groups are served in one call."""
    from collections import Counter

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lively)
    model = AutoModelForCausalLM.from_pretrained(lively)
    contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + ["hello", "the cat", "x"]
    counts = Counter()
    for c in contexts:
        ids = tok(c, return_tensors="pt").input_ids
        counts.update(model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:].tolist())
    frequent = next(t for t, _ in counts.most_common() if t not in tok.all_special_ids)
    model.generation_config.eos_token_id = [tok.eos_token_id, frequent]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hf, fast = _pair(str(tmp_path), batch_size=3, gen_batch_size=3)  # 8 rows through 3 slots: refills
    reqs = _gen_requests(contexts, until=["\n\n"], max_gen_toks=30)
    reqs += _gen_requests(contexts[:4], until=["ent", "\n\n"], max_gen_toks=7)
    want = hf.generate_until(reqs, disable_tqdm=True)
    got = fast.generate_until(reqs, disable_tqdm=True)
    assert got == want
    assert fast.stats["prefill_calls"] > 3  # rows really waited for slots
    ends = [w.endswith(tok.decode([frequent])) for w in want[: len(contexts)]]
    assert any(ends) and len({len(w) for w in want}) > 2


def test_sampling_delegates_to_hflm(models):
    hf, fast = models
    reqs = [Instance("generate_until", {}, ("hello", {"until": ["\n\n"], "max_gen_toks": 5, "do_sample": False,
                                                        "repetition_penalty": 1.3}), 0)]
    fast.stats.clear()
    assert fast.generate_until(reqs, disable_tqdm=True) == hf.generate_until(reqs, disable_tqdm=True)
    assert fast.stats["forward_calls"] == 0  # handled by HFLM.generate_until itself


def test_generation_does_not_depend_on_decode_slots(lively, models):
    """The same texts with 1, 3 and 32 decode slots (refill order, slot moves, packed prefills) and as hf."""
    hf, _ = models
    contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A]
    contexts += [f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + ["hello", "a b c d e f g h i j k"]
    free = hf.generate_until(_gen_requests(contexts, until=[], max_gen_toks=20), disable_tqdm=True)
    stops = sorted({s[len(s) // 2 : len(s) // 2 + 2] for s in free if len(s) > 6 and s[len(s) // 2 :][:2].strip()})[:2]
    reqs = _gen_requests(contexts, until=stops + ["\n\n"], max_gen_toks=20)
    want = hf.generate_until(reqs, disable_tqdm=True)
    assert any(len(w) < len(f) for w, f in zip(want, free))  # some rows stop early, so slots free up mid-way
    prefills = {}
    for slots in (1, 3, 32):
        fast = GenftHFLM(pretrained=lively, device="cpu", batch_size=4, gen_batch_size=slots)
        assert fast.generate_until(reqs, disable_tqdm=True) == want, slots
        prefills[slots] = fast.stats["prefill_calls"]
    assert prefills[1] == len(contexts) and prefills[32] < prefills[3] < prefills[1]


def test_ngram_drafts_continue_the_latest_earlier_occurrence():
    from genft.packed_decode import NgramDrafts

    d = NgramDrafts([5, 1, 2, 3, 4, 8, 1, 2, 3, 6, 1, 2, 3])
    assert d.draft(3) == [6, 1, 2]  # (1, 2, 3) last occurred before the 6, not before the 4
    d.append(6)
    assert d.draft(8) == [1, 2, 3, 6]  # (2, 3, 6) ended at index 10; the draft runs into the row's own end
    d.append(42)
    assert d.draft(4) == []  # 42 never occurred before: no draft rather than a guess
    assert NgramDrafts([7, 8, 9, 8]).draft(5) == [9, 8]  # no 3- or 2-gram match: the latest 1-gram
    assert NgramDrafts([7, 8, 9, 8]).draft(0) == []


@pytest.mark.parametrize("model", ["tiny_model", "lively", "lively_swa"])
def test_verified_drafts_keep_token_by_token_greedy_output(model, request):
    """Drafts on (the default) and off give hf's texts.  The stock tiny model and the livened sliding-window
    model repeat themselves, so their drafts are kept and their rows need fewer decoding steps; the livened
    Llama's varied text rejects most drafts."""
    pretrained = request.getfixturevalue(model)
    hf, _ = _pair(pretrained)
    contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A]
    contexts += [f"### Input:\n{t} and then some more words to pass the window\n### Sentiment:" for t in ITEMS_A]
    reqs = _gen_requests(contexts, until=["\n\n"], max_gen_toks=40)
    want = hf.generate_until(reqs, disable_tqdm=True)
    stats = {}
    for draft in (0, 8):
        fast = GenftHFLM(pretrained=pretrained, device="cpu", batch_size=4, draft_tokens=draft)
        assert fast.generate_until(reqs, disable_tqdm=True) == want, draft
        stats[draft] = fast.stats
    assert "draft_tokens" not in stats[0] and stats[8]["draft_tokens"] > 0
    assert stats[8]["generated_tokens"] == stats[0]["generated_tokens"]
    kept = stats[8]["draft_accepted"] / stats[8]["draft_tokens"]
    if model == "lively":  # varied text: most drafts rejected, and each row keeps its own greedy tokens
        assert 0 < kept < 0.5
    else:  # repetitive text (on the sliding-window model: windows over cached keys): most drafts kept
        assert kept > 0.5 and stats[8]["decode_steps"] < 0.6 * stats[0]["decode_steps"]


def test_waiting_rows_join_when_they_all_fit(lively):
    """Rows prefilled one at a time into 8 slots: the last waiting row takes the last free slot at once
    (it does not wait for a quarter of the slots to free up), so 8 rows of 12 tokens take 11 decoding steps."""
    from genft.packed_decode import greedy_decode
    from genft.packed_rows import rows_attention

    fast = GenftHFLM(pretrained=lively, device="cpu", batch_size=4)
    rows = [fast.tok_encode(f"row {i} of the batch") for i in range(8)]
    stats = {}
    with rows_attention(fast._causal_lm()):
        out = greedy_decode(fast._rows_forward, fast._greedy_tokens, rows, None, 12, lambda t: len(t) >= 12, "cpu",
                            capacity=8, prefill_tokens=1, stats=stats, max_draft=0)
    assert [len(o) for o in out] == [12] * 8
    assert stats["prefill_calls"] == 8 and stats["decode_steps"] == 11


# --------------------------------------------------------------------------- sliding-window layers


def test_sliding_window_loglikelihood_matches_hf(lively_swa):
    hf, fast = _pair(lively_swa)
    window = fast._causal_lm().config.sliding_window
    reqs = _ll_requests()
    assert len(fast.tok_encode(DEMOS_A)) > 3 * window  # the shared prefix alone spans several windows
    want = hf.loglikelihood(reqs, disable_tqdm=True)
    got = fast.loglikelihood(reqs, disable_tqdm=True)
    _assert_same_ll(want, got)
    # The fast path ran (no delegation), the demonstrations were computed once per task, and the lm_head ran
    # only at scored positions (not at every position of every context).
    s = fast.stats
    assert s["prefix_forwards"] == 2 and s["forward_calls"] >= 3
    assert s["head_rows"] < s["forward_tokens"] / 2


@pytest.mark.parametrize("shared", [True, False])
def test_sliding_window_generate_matches_hf(lively_swa, shared):
    hf, fast = _pair(lively_swa, gen_batch_size=3)
    if shared:
        contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A]
        contexts += [DEMOS_B + f"### Input_1:\n{a}\n### Input_2:\n{b}\n### Inference:" for a, b in ITEMS_B]
    else:
        contexts = [f"### Input:\n{t} and then some more words to pass the window\n### Sentiment:" for t in ITEMS_A]
    free = hf.generate_until(_gen_requests(contexts, until=[], max_gen_toks=30), disable_tqdm=True)
    assert len(set(free)) > 1
    stops = sorted({s[len(s) // 2 : len(s) // 2 + 2] for s in free if len(s) > 6 and s[len(s) // 2 :][:2].strip()})[:2]
    for until in (["\n\n"], stops + ["\n\n"]):
        reqs = _gen_requests(contexts, until=until, max_gen_toks=30)
        fast.stats.clear()
        assert fast.generate_until(reqs, disable_tqdm=True) == hf.generate_until(reqs, disable_tqdm=True), until
    assert fast.stats["prefix_forwards"] == (2 if shared else 0)
    assert fast.stats["decode_steps"] > 0


def test_probe_turns_the_fast_path_off_when_attention_is_wrong(lively_swa, monkeypatch):
    """A defect in genft's attention (here: the sliding window ignored on cached prefix keys) is caught by the
    first-call check, and genft-hf then delegates to HFLM: scores stay hf's."""
    from genft import packed_rows

    monkeypatch.setattr(packed_rows.RowState, "prefix_mask", lambda self, window: None)
    hf, fast = _pair(lively_swa)
    reqs = _ll_requests()[:8]
    got = fast.loglikelihood(reqs, disable_tqdm=True)
    assert "differs" in fast._fast_reason
    assert fast.stats["forward_calls"] == 0
    _assert_same_ll(hf.loglikelihood(reqs, disable_tqdm=True), got)


# --------------------------------------------------------------------------- LoRA adapters


def test_lora_adapter_matches_hf(lively, lora_adapter, models):
    hf, fast = _pair(lively, peft=lora_adapter)
    base_hf, _ = models
    reqs = _ll_requests()
    want = hf.loglikelihood(reqs, disable_tqdm=True)
    base = base_hf.loglikelihood(reqs, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(want, base)) > 1e-2  # the adapter matters
    _assert_same_ll(want, fast.loglikelihood(reqs, disable_tqdm=True))
    contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + ["hello"]
    gen = _gen_requests(contexts, until=["\n\n", "e"])
    assert fast.generate_until(gen, disable_tqdm=True) == hf.generate_until(gen, disable_tqdm=True)


# --------------------------------------------------------------------------- registration


def test_registered_and_hf_still_resolves():
    from lm_eval.api.registry import get_model

    assert get_model("genft-hf") is GenftHFLM
    from lm_eval.models.huggingface import HFLM

    assert get_model("hf") is HFLM


EVAL_TASKS = ["genft_sentiment_builtin_products", "genft_summary_builtin_sports"]


@pytest.fixture(scope="module")
def hf_reference(lively, builtin_data):
    """lm-eval's own `hf` on two genft tasks (a classification and a generation), 1 shot, 3 items."""
    import lm_eval

    from genft import harness

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={lively},batch_size=2", tasks=EVAL_TASKS,
                                   num_fewshot=1, limit=3, device="cpu", log_samples=True,
                                   task_manager=harness.task_manager(lively, builtin_data))


def _same_results(got, want):
    for task in EVAL_TASKS:
        a, b = got["samples"][task], want["samples"][task]
        assert [x["doc_id"] for x in a] == [x["doc_id"] for x in b] == [0, 1, 2], task
        for x, y in zip(a, b):
            for ra, rb in zip(x["resps"], y["resps"]):
                if isinstance(rb[0], str):
                    assert ra == rb, task  # the same generated text
                else:
                    # (is_greedy: a bool in memory, "True" / "False" in a samples file)
                    assert abs(float(ra[0][0]) - float(rb[0][0])) < TOL and str(ra[0][1]) == str(rb[0][1]), task
        metrics = {k: v for k, v in want["results"][task].items() if isinstance(v, float) and "stderr" not in k}
        assert metrics and {k: got["results"][task][k] for k in metrics} == pytest.approx(metrics, abs=1e-9), task


def test_simple_evaluate_by_name(lively, builtin_data, hf_reference, monkeypatch):
    """The Python API path: `import genft.backend`, then simple_evaluate(model="genft-hf", model_args=...) builds
    genft's class, runs its own fast path, and scores as hf does."""
    import lm_eval

    from genft import harness

    built = []
    real_init = GenftHFLM.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        built.append(self)

    monkeypatch.setattr(GenftHFLM, "__init__", init)
    got = lm_eval.simple_evaluate(model="genft-hf", model_args=f"pretrained={lively},batch_size=2,prefix_min_tokens=4",
                                  tasks=EVAL_TASKS, num_fewshot=1, limit=3, device="cpu", log_samples=True,
                                  task_manager=harness.task_manager(lively, builtin_data))
    [lm] = built
    assert lm.prefix_min_tokens == 4 and lm.batch_size == 2 and not lm._fast_reason
    assert lm.stats["forward_calls"] > 0 and lm.stats["prefix_forwards"] > 0  # genft's own path scored it
    _same_results(got, hf_reference)


def test_genft_lm_eval_command(lively, builtin_data, hf_reference, tmp_path):
    """`genft-lm-eval --model genft-hf ...`: lm-eval's own command line with genft-hf registered."""
    command = shutil.which("genft-lm-eval", path=str(Path(sys.executable).parent))
    assert command, "the genft-lm-eval command is not installed beside this python (pip install -e .)"
    env = {**os.environ, "GENFT_DATA_DIR": str(builtin_data), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([command, "--model", "genft-hf", "--model_args", f"pretrained={lively}", "--batch_size", "2",
                          "--device", "cpu", "--include_path", "harness_tasks", "--tasks", ",".join(EVAL_TASKS),
                          "--num_fewshot", "1", "--limit", "3", "--output_path", str(tmp_path / "out"),
                          "--log_samples"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [result_file] = list((tmp_path / "out").rglob("results_*.json"))
    got = json.loads(result_file.read_text())
    assert got["config"]["model"] == "genft-hf"
    got["samples"] = {t: [json.loads(line) for line in next(result_file.parent.glob(f"samples_{t}_[0-9]*.jsonl"))
                          .read_text().splitlines()] for t in EVAL_TASKS}
    for t in EVAL_TASKS:
        got["samples"][t].sort(key=lambda x: x["doc_id"])
    _same_results(got, hf_reference)


def test_fast_off_is_plain_hflm(lively, models):
    """fast=False hands every request to HFLM itself: hf's numbers and texts exactly, genft's path never runs."""
    hf, _ = models
    off = GenftHFLM(pretrained=lively, device="cpu", batch_size=4, fast=False)
    reqs = _ll_requests()
    assert off.loglikelihood(reqs, disable_tqdm=True) == hf.loglikelihood(reqs, disable_tqdm=True)
    gen = _gen_requests([DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A], until=["\n\n"])
    assert off.generate_until(gen, disable_tqdm=True) == hf.generate_until(gen, disable_tqdm=True)
    assert off.stats["forward_calls"] == off.stats["prefix_forwards"] == off.stats["prefill_calls"] == 0


# --------------------------------------------------------------------------- slow: SmolLM2 on the study's data


def _harness_ready() -> bool:
    try:
        from genft import harness

        harness.tasks_dir()
        return hasattr(harness, "task_manager") and hasattr(harness, "evaluate")
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def smollm2() -> str:
    from genft.models import ModelError, prepare

    try:
        return str(prepare("smollm2-135m"))
    except ModelError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def smollm2_lora(smollm2, tmp_path_factory) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("smol-lora")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(out)
    return str(out)


def _samples(results, task):
    return results["samples"][task]


def _compare_cells(smollm2, study_data, peft=None, cells=(), **fast_args):
    from genft import harness
    from genft.metrics import clean_generation

    tm = harness.task_manager(smollm2, study_data)
    args = {"peft": peft} if peft else {}
    hf = harness.load_model(smollm2, backend="hf", batch_size=4, **args)
    fast = harness.load_model(smollm2, backend="genft-hf", batch_size=4, **args, **fast_args)
    for task, shots, limit in cells:
        a = harness.evaluate(hf, [task], num_fewshot=shots, limit=limit, tm=tm, log_samples=True)
        b = harness.evaluate(fast, [task], num_fewshot=shots, limit=limit, tm=tm, log_samples=True)
        sa, sb = _samples(a, task), _samples(b, task)
        assert len(sa) == len(sb) == limit
        for x, y in zip(sa, sb):
            assert x["doc_id"] == y["doc_id"]
            for ra, rb in zip(x["resps"], y["resps"]):
                if isinstance(ra[0], str):  # the scored text (genft-hf stops at the study's cut)
                    assert clean_generation(ra[0]) == clean_generation(rb[0]), (task, shots, x["doc_id"])
                    assert ra == rb or (fast.cut_at_blank_line and len(rb[0]) < len(ra[0])), (task, shots)
                else:
                    assert abs(float(ra[0][0]) - float(rb[0][0])) < TOL and ra[0][1] == rb[0][1], (task, shots)
        ra, rb = a["results"][task], b["results"][task]
        for key, val in ra.items():
            if isinstance(val, float) and "stderr" not in key:
                assert val == pytest.approx(rb[key], abs=1e-9), (task, shots, key)
    assert not fast._fast_reason  # genft-hf's own path ran (no delegation to HFLM)
    return fast


CELLS = [("genft_sentiment_amazon", 0, 10), ("genft_sentiment_amazon", 4, 10), ("genft_nli_mnli_m", 5, 10),
         ("genft_summary_xsum", 2, 4), ("genft_question_socialiqa", 0, 4)]


@pytest.mark.slow
def test_smollm2_study_data_matches_hf(smollm2, study_data):
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    torch.set_num_threads(int(os.environ.get("GENFT_TEST_THREADS", "1")))
    _compare_cells(smollm2, study_data, cells=CELLS)


@pytest.mark.slow
def test_smollm2_lora_study_data_matches_hf(smollm2, smollm2_lora, study_data):
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    _compare_cells(smollm2, study_data, peft=smollm2_lora,
                   cells=[("genft_nli_mnli_m", 3, 8), ("genft_summary_xsum", 1, 3)])


# The suites' generation cells: genft's builtin summary/question sets and the study's XSum/SocialIQA, at 0 and k
# shots.  Four decode slots for more items than that: rows finish at different steps and others refill.
GEN_CELLS = [("genft_summary_xsum", 0, 6), ("genft_summary_xsum", 1, 6), ("genft_question_socialiqa", 0, 8),
             ("genft_question_socialiqa", 2, 8), ("genft_summary_builtin_sports", 0, 6),
             ("genft_summary_builtin_weather", 2, 6), ("genft_question_builtin_social", 0, 6),
             ("genft_question_builtin_science", 2, 6)]


@pytest.fixture(scope="module")
def gen_data(study_data):
    """The study's data plus genft's builtin sets in one folder."""
    from genft.builtin import generate

    generate(study_data, log=lambda *_: None)
    return study_data


@pytest.mark.slow
def test_smollm2_generation_matches_hf(smollm2, gen_data):
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    torch.set_num_threads(int(os.environ.get("GENFT_TEST_THREADS", "1")))
    fast = _compare_cells(smollm2, gen_data, cells=GEN_CELLS, gen_batch_size=4)
    assert fast.stats["prefill_calls"] > len(GEN_CELLS) and fast.stats["prefix_forwards"] >= 4


@pytest.mark.slow
@pytest.mark.ci
def test_smollm2_generation_matches_hf_ci(smollm2, study_format_data):
    """CI's share of the check above, on any clone: SocialIQA in the study's format (the release the tests
    make) with two demonstrations, 5 items through 2 decode slots."""
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    fast = _compare_cells(smollm2, study_format_data, cells=[("genft_question_socialiqa", 2, 5)], gen_batch_size=2)
    assert fast.stats["prefill_calls"] >= 3 and fast.stats["prefix_forwards"] == 1


# --------------------------------------------------------------------------- the study's cut, as a stop


@pytest.fixture(scope="module")
def blank_lines(lively, tmp_path_factory) -> str:
    """The lively model with the newline token's row swapped with that of a token it often emits twice in a
    row (tied embeddings: input and output), so that its greedy texts hold blank lines at varied places."""
    from collections import Counter

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lively)
    model = AutoModelForCausalLM.from_pretrained(lively)
    newline = tok.encode("\n", add_special_tokens=False)[-1]
    pairs = Counter()
    for c in [f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + [DEMOS_A, "hello"]:
        ids = tok(c, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:].tolist()
        pairs.update(a for a, b in zip(out, out[1:]) if a == b and a not in tok.all_special_ids)
    twice = pairs.most_common(1)[0][0]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[[newline, twice]] = emb[[twice, newline]].clone()
        head = model.get_output_embeddings().weight
        if head.data_ptr() != emb.data_ptr():
            head[[newline, twice]] = head[[twice, newline]].clone()
    out = tmp_path_factory.mktemp("blank-lines")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_cut_at_blank_line_stops_early_and_scores_the_same(blank_lines):
    """With cut_at_blank_line a row stops once its stripped text has text then a blank line: every text, once
    stripped and cut as genft's generation tasks do, equals hf's, and rows really stopped early.  A row whose
    output starts with blank lines goes on (its text comes after them).  A stop sequence holding a newline
    turns the cut off (it could straddle it): then the raw texts equal hf's."""
    from genft.metrics import clean_generation

    hf, plain = _pair(blank_lines, gen_batch_size=3)
    fast = GenftHFLM(pretrained=blank_lines, device="cpu", batch_size=4, gen_batch_size=3, cut_at_blank_line=True)
    contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A]
    contexts += [f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A] + ["hello", "a b c d e f g h i j k", "\n\n"]
    reqs = _gen_requests(contexts, until=[], max_gen_toks=30)
    want = hf.generate_until(reqs, disable_tqdm=True)
    assert plain.generate_until(reqs, disable_tqdm=True) == want  # off by default: hf's raw texts
    got = fast.generate_until(reqs, disable_tqdm=True)
    assert [clean_generation(g) for g in got] == [clean_generation(w) for w in want]
    cut = [i for i, (g, w) in enumerate(zip(got, want)) if len(g) < len(w)]
    assert cut, (want, got)  # a row stopped at its blank line
    assert all("\n\n" in got[i].lstrip() for i in cut)
    assert fast.stats["forward_tokens"] < plain.stats["forward_tokens"]  # that row decoded fewer tokens
    reqs = _gen_requests(contexts, until=["\n###"], max_gen_toks=30)
    assert fast.generate_until(reqs, disable_tqdm=True) == hf.generate_until(reqs, disable_tqdm=True)


def test_cut_at_blank_line_rule_never_changes_the_scored_text(lively):
    """The stop rule itself, on many token sequences full of newlines and spaces (leading blank lines, blank
    lines inside one token or across two, text after them): wherever it stops a row, the stripped-and-cut
    text of what was generated so far equals that of the whole sequence; and it does stop once text and a
    blank line are there."""
    import random

    from genft.metrics import clean_generation

    fast = GenftHFLM(pretrained=lively, device="cpu", batch_size=4, cut_at_blank_line=True)
    tok = fast.tokenizer
    pieces = ["\n", "\n\n", " ", "a", " cat", "Yes", ".", " \n", "\n "]
    ids = sorted({t for p in pieces for t in tok.encode(p, add_special_tokens=False)})
    ids += tok.encode("\n", add_special_tokens=False) * len(ids)  # newlines half the time
    finished = fast._stop_rule(max_gen_toks=1000, until=[tok.decode([fast.eot_token_id])])
    rng = random.Random(0)
    stopped = 0
    for _ in range(300):
        toks = [rng.choice(ids) for _ in range(rng.randrange(1, 14))]
        whole = clean_generation(fast.tok_decode(toks))
        for k in range(1, len(toks) + 1):
            if finished(toks[:k]):
                assert clean_generation(fast.tok_decode(toks[:k])) == whole, (toks, k)
                stopped += 1
                break
        else:
            text = fast.tok_decode(toks).lstrip()
            assert "\n\n" not in text[1:], toks  # text then a blank line, and the rule did not stop
    assert stopped > 100


# --------------------------------------------------------------------------- bf16 weights (the study's dtype)


needs_bf16 = pytest.mark.skipif(bool(cpu_bf16_missing()), reason=f"no native bf16 on this CPU: {cpu_bf16_missing()}")

# genft-hf vs hf, both with bf16 weights.  lm-eval's hf returns log-probabilities computed (and rounded) in
# bf16, so a sum of them carries a few bf16 units of the last place (2**-7 relative); the largest difference
# measured on these requests: 0.125 at |loglikelihood| 21.8 on the livened Llama (0.57%), 0.25 at 38.5 on the
# livened sliding-window model (0.65%); hf in bf16 vs hf in fp32 differ by as much (0.12).  Allowed: 2**-6
# relative (1.6%), or 0.05 for small values.  A structural fault (a mask, a window, a position) moves them by
# whole units.
BF16_LL_REL, BF16_LL_ABS = 2**-6, 0.05
# A greedy text may part from hf's only where bf16 leaves the two tokens' logits all but tied: measured gaps
# (hf's own bf16 forward, at the first differing token) 0 to 0.047, 1.5 units of the last place at logits ~4;
# elsewhere the top-2 gap of this model has a median of 0.27 and a 10th percentile of 0.047.
BF16_TIE = 0.0625


def _recording_decodes(lm) -> dict:
    """Wrap lm.tok_decode: every decoded token list, by its text (the generated tokens behind each text)."""
    seen, decode = {}, lm.tok_decode

    def record(tokens, *args, **kwargs):
        text = decode(tokens, *args, **kwargs)
        if not isinstance(tokens, int):
            seen[text] = [int(t) for t in tokens]
        return text

    lm.tok_decode = record
    return seen


@needs_bf16
@pytest.mark.parametrize("model", ["lively", "lively_swa"])
def test_bf16_loglikelihood_and_greedy_match_hf_in_bf16(model, request):
    pretrained = request.getfixturevalue(model)
    hf, fast = _pair(pretrained, dtype="bfloat16")
    assert fast.model.dtype == torch.bfloat16 == hf.model.dtype
    reqs = _ll_requests()
    want = hf.loglikelihood(reqs, disable_tqdm=True)
    got = fast.loglikelihood(reqs, disable_tqdm=True)
    assert fast._fast_reason == "" and fast.stats["prefix_forwards"] > 0  # the fast path ran, prefixes shared
    for i, ((la, ga), (lb, gb)) in enumerate(zip(want, got)):
        assert abs(la - lb) <= max(BF16_LL_ABS, BF16_LL_REL * abs(la)), (i, la, lb)
        assert ga == gb, (i, la, lb)
    assert max(abs(a[0] - b[0]) for a, b in zip(want, got)) > 0  # bf16 rounding differs: not one code path

    hf_toks, fast_toks = _recording_decodes(hf), _recording_decodes(fast)
    contexts = [DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A]
    contexts += [DEMOS_B + f"### Input_1:\n{a}\n### Input_2:\n{b}\n### Inference:" for a, b in ITEMS_B]
    contexts += [f"### Input:\n{t} and then some more words to pass the window\n### Sentiment:" for t in ITEMS_A]
    reqs = _gen_requests(contexts, until=[], max_gen_toks=40)
    fast.stats.clear()
    texts = hf.generate_until(reqs, disable_tqdm=True), fast.generate_until(reqs, disable_tqdm=True)
    assert fast.stats["prefix_forwards"] == 2 and fast.stats["draft_tokens"] > 0  # prefix reuse and drafts ran
    parted = 0
    for ctx, a, b in zip(contexts, *texts):
        if a == b:
            continue
        parted += 1
        ta, tb = hf_toks[a], fast_toks[b]
        k = next(i for i in range(min(len(ta), len(tb)) + 1) if i == min(len(ta), len(tb)) or ta[i] != tb[i])
        assert k < min(len(ta), len(tb)), (a, b)  # one text is not merely cut shorter
        ids = hf.tok_batch_encode([ctx])[0][0].tolist() + ta[:k]
        with torch.no_grad():
            logits = hf.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        assert abs(float(logits[ta[k]] - logits[tb[k]])) <= BF16_TIE, (ctx, k, ta[k], tb[k])
    # measured: the livened Llama's near-flat bf16 logits part 7 of 13 texts at near-ties, the sliding-window one none
    assert parted <= (7 if model == "lively" else 0), parted


def test_bf16_evaluation_refused_on_a_cpu_without_it(tiny_model, tmp_path, monkeypatch, capsys):
    """On a CPU whose torch reports neither AVX512-BF16 nor AMX, bf16 weights are refused before any model is
    loaded, naming the setting; float32 loads there as before."""
    import platform

    from lm_eval.api import registry

    from genft import harness
    from genft.cli import main as cli_main
    from genft.precision import PrecisionError

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    real_get_model = registry.get_model
    loads = []
    monkeypatch.setattr(registry, "get_model", lambda name: loads.append(name) or real_get_model(name))
    with pytest.raises(PrecisionError, match="dtype: bf16 on this CPU is refused: this x86 CPU .* neither "
                       "AVX512-BF16 nor AMX"):
        harness.load_model(tiny_model, "genft-hf", dtype="bfloat16")
    assert cli_main(["eval", "--model", tiny_model, "--dtype", "bfloat16", "--limit", "1",
                     "--data-dir", str(tmp_path)]) == 2
    assert "--dtype: bf16 on this CPU is refused" in capsys.readouterr().err
    assert loads == []
    assert harness.load_model(tiny_model, "genft-hf", dtype="float32").model.dtype == torch.float32
    assert loads == ["genft-hf"]


@needs_bf16
def test_bf16_through_the_harness_loads_bf16_weights(tiny_model):
    from genft import harness

    lm = harness.load_model(tiny_model, "genft-hf", dtype="bfloat16")
    assert lm.model.dtype == torch.bfloat16 and lm._fast_ok()
