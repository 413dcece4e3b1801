"""genft-hf (genft.backend) against lm-eval's own `hf` model on the model forms the study meets beyond a plain
float32 Llama: sliding-window layers (genft's tiny Gemma-2-style `tiny-swa`: 16-token windows mixed with full
layers, softcaps, whose test contexts are several windows long; a wrong attention is caught by the first-call
check), LoRA adapters, and bf16 weights (the study's dtype: log-likelihoods within bf16 rounding, greedy texts
parting only at near-ties; refused on a CPU without native bf16).
"""
from __future__ import annotations

import pytest
import torch

from backend_setup import (DEMOS_A, DEMOS_B, ITEMS_A, ITEMS_B, _assert_same_ll, _gen_requests, _ll_requests, _pair,
                           save_random_lora)
from genft.precision import cpu_bf16_missing


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


@pytest.fixture(scope="module")
def lora_adapter(lively, tmp_path_factory) -> str:
    """A LoRA adapter on the lively model with a random, nonzero B (so that it changes the outputs)."""
    return save_random_lora(lively, tmp_path_factory.mktemp("lora"), ["q_proj", "v_proj", "down_proj"], 0.3, 2)


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
