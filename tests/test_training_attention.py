"""genft.training.attention: per-example attention in padding-free training batches, fed the batches TRL's
padding-free collator makes, against transformers' sdpa with its block-diagonal mask."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from genft.training import attention as gattn  # noqa: E402

torch.set_num_threads(1)

# examples of different lengths (the tiny model: 4 query heads sharing 2 kv heads, so GQA is exercised)
LENGTHS = (5, 17, 9, 23)


def _model(path, dtype=torch.float32, per_example=False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if per_example:
        assert gattn.use_example_attention(model) == gattn.ATTN_NAME
    return model


def _flat_batch(ids_per_example):
    """What SFTTrainer's padding-free collator hands the model (cu_seq_lens_*, position_ids, seq_idx, ...)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": x} for x in ids_per_example])
    assert "cu_seq_lens_q" in batch, "the collator no longer passes sequence boundaries: nothing to run per example"
    return batch


def _examples(seed=0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in lengths]


def _forward_backward(model, batch, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.float().detach(), float(out.loss.detach()), grads


def test_per_example_attention_is_the_masked_sdpa_function(tiny_model):
    """float32: the same logits, loss and gradients as sdpa over the whole row with its block-diagonal mask."""
    batch = _flat_batch(_examples())
    ref = _forward_backward(_model(tiny_model), batch)
    calls = []
    real = gattn.F.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(a[0].shape[2])
        return real(*a, **k)

    gattn.F.scaled_dot_product_attention = counting
    try:
        mine = _forward_backward(_model(tiny_model, per_example=True), batch)
    finally:
        gattn.F.scaled_dot_product_attention = real
    assert calls == list(LENGTHS) * 2, "one causal attention per example and layer (2 layers)"
    torch.testing.assert_close(mine[0], ref[0], atol=1e-5, rtol=1e-5)
    assert mine[1] == pytest.approx(ref[1], rel=1e-6)
    assert mine[2].keys() == ref[2].keys() and len(ref[2]) > 0
    for name in ref[2]:
        torch.testing.assert_close(mine[2][name], ref[2][name], atol=1e-5, rtol=1e-4, msg=name)


def test_an_example_never_sees_its_neighbour(tiny_model):
    """Changing one example's tokens leaves every other example's logits exactly as they were."""
    model = _model(tiny_model, per_example=True)
    a, b = _examples(0), _examples(0)
    b[1] = _examples(1)[1]  # another second example, of the same length
    with torch.no_grad():
        la = model(**_flat_batch(a), use_cache=False).logits[0]
        lb = model(**_flat_batch(b), use_cache=False).logits[0]
    s1, e1 = LENGTHS[0], LENGTHS[0] + LENGTHS[1]
    assert not torch.equal(la[s1:e1], lb[s1:e1])
    torch.testing.assert_close(torch.cat([la[:s1], la[e1:]]), torch.cat([lb[:s1], lb[e1:]]), atol=1e-6, rtol=0)


def test_bf16_on_the_cpu_runs_two_matmuls_within_bf16_rounding(tiny_model):
    """Under bf16 autocast (q, k, v in bf16) the examples run as two bf16 matmuls, not the fused kernel; the
    result is as far from float32 as sdpa's own bf16 result is."""
    batch = _flat_batch(_examples())
    fp32 = _forward_backward(_model(tiny_model), batch)
    sdpa_bf16 = _forward_backward(_model(tiny_model), batch, autocast=True)
    real = gattn.F.scaled_dot_product_attention

    def refuse(*a, **k):
        raise AssertionError("the fused kernel ran in bf16 on the CPU")

    gattn.F.scaled_dot_product_attention = refuse
    try:
        mine = _forward_backward(_model(tiny_model, per_example=True), batch, autocast=True)
    finally:
        gattn.F.scaled_dot_product_attention = real
    err_mine = (mine[0] - fp32[0]).abs().max()
    err_sdpa = (sdpa_bf16[0] - fp32[0]).abs().max()
    assert err_mine <= 2 * err_sdpa + 1e-3, (err_mine, err_sdpa)
    assert mine[1] == pytest.approx(fp32[1], rel=2e-2)


def test_calls_it_cannot_split_go_to_sdpa_unchanged(tiny_model):
    """A padded batch (no boundaries), boundaries that do not partition the row, and a sliding window shorter
    than an example: the call is sdpa's, with its mask, bit for bit."""
    ids = _examples()
    width = max(LENGTHS)
    padded = {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
              "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])}
    ref, mine = _model(tiny_model), _model(tiny_model, per_example=True)
    with torch.no_grad():
        assert torch.equal(mine(**padded).logits, ref(**padded).logits)
        flat = _flat_batch(ids)
        broken = {**flat, "cu_seq_lens_q": flat["cu_seq_lens_q"][:-1], "cu_seq_lens_k": flat["cu_seq_lens_k"][:-1]}
        assert torch.equal(mine(**broken, use_cache=False).logits, ref(**broken, use_cache=False).logits)
    q = torch.randn(1, 4, sum(LENGTHS), 16)
    kv = torch.randn(1, 2, sum(LENGTHS), 16)
    cu = flat["cu_seq_lens_q"]
    assert gattn._boundaries(q, kv, 0.0, None, cu, cu, {}) == [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    assert gattn._boundaries(q, kv, 0.0, max(LENGTHS) - 1, cu, cu, {}) is None
    assert gattn._boundaries(q, kv, 0.0, max(LENGTHS), cu, cu, {}) is not None
    assert gattn._boundaries(q, kv, 0.1, None, cu, cu, {}) is None  # attention dropout
    assert gattn._boundaries(q, kv, 0.0, None, cu, cu, {"softcap": 30.0}) is None


def test_only_sdpa_is_replaced_and_the_saved_model_does_not_name_it(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    assert gattn.use_example_attention(eager).startswith("eager (the model's own")
    assert eager.config._attn_implementation == "eager"
    model = _model(tiny_model, per_example=True)
    model.save_pretrained(tmp_path / "saved")
    assert gattn.ATTN_NAME not in (tmp_path / "saved" / "config.json").read_text()
    assert "_attn_implementation" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config._attn_implementation == "sdpa"
