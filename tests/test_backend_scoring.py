"""genft-hf (genft.backend) against lm-eval's own `hf` model on log-likelihoods: the shared-prefix plan, then
the same log-likelihoods and is_greedy flags on two tasks' requests (tests/backend_setup.py), each string
tokenized once, batched equal to unbatched, and every shared prefix computed once.  The model is the tiny
Llama, livened (tests/conftest.py: `lively`, `models`).
"""
from __future__ import annotations

import math

import pytest

from lm_eval.api.instance import Instance

from backend_setup import (DEMOS_A, ITEMS_A, ITEMS_B, LABELS_A, LABELS_B, _assert_same_ll, _gen_requests,
                           _ll_requests)
from genft.backend import GenftHFLM, common_prefix_len, plan_prefix_groups


def _greedy_continuation(hf, context: str, n: int) -> str:
    out = hf.generate_until([Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": n,
                                                                           "do_sample": False}), 0)], disable_tqdm=True)
    return out[0]


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
