"""genft-hf (genft.backend) against lm-eval's own `hf` model on generate_until: the same greedy texts with and
without shared prefixes and stop sequences, rows ending at EOS, mixed generation settings, sampling handed to
hf, any number of decode slots, n-gram drafts that keep token-by-token greedy output, and the study's cut at
a blank line used as a stop.  The models are the tiny Llama and genft's tiny sliding-window model, livened so
that their greedy texts vary (tests/conftest.py: `lively`, `lively_swa`, `models`).
"""
from __future__ import annotations

import pytest
import torch

from lm_eval.api.instance import Instance

from backend_setup import DEMOS_A, DEMOS_B, ITEMS_A, ITEMS_B, _gen_requests, _pair
from genft.backend import GenftHFLM


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
