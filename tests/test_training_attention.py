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


def test_bf16_on_the_cpu_attends_in_float32(tiny_model):
    """Under bf16 autocast (and with bf16 weights) the examples' attention runs in float32 on the CPU and hands
    back bf16, as sdpa would; the loss stays within bf16 rounding of float32's."""
    batch = _flat_batch(_examples())
    fp32 = _forward_backward(_model(tiny_model), batch)
    real = gattn.F.scaled_dot_product_attention
    seen = []

    def recording(*a, **k):
        seen.append(a[0].dtype)
        return real(*a, **k)

    gattn.F.scaled_dot_product_attention = recording
    try:
        mixed = _forward_backward(_model(tiny_model, per_example=True), batch, autocast=True)
        with torch.no_grad():
            out = _model(tiny_model, dtype=torch.bfloat16, per_example=True)(**batch, use_cache=False)
    finally:
        gattn.F.scaled_dot_product_attention = real
    assert seen == [torch.float32] * (2 * 2 * len(LENGTHS)), seen  # 2 layers, 2 models
    assert out.logits.dtype == torch.bfloat16
    assert mixed[1] == pytest.approx(fp32[1], rel=2e-2)


def test_float32_scores_keep_a_sharp_softmax_as_accurate_as_sdpa():
    """Sharp attention on bf16 inputs: the per-example result errs no more than sdpa's own bf16 kernel against
    a float64 reference (two bf16 matmuls, scores rounded to bf16, erred ten times more)."""
    torch.manual_seed(0)
    n = 150
    q, k = (torch.randn(1, 9, n, 64) * 3).bfloat16(), (torch.randn(1, 3, n, 64) * 3).bfloat16()
    v = torch.randn(1, 3, n, 64).bfloat16()
    ref = gattn.F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True)
    sdpa = gattn.F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    cu = torch.tensor([0, 40, n], dtype=torch.int32)
    mine, _ = gattn.example_attention_forward(None, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert mine.dtype == torch.bfloat16 and mine.shape == (1, n, 9, 64)
    mine = mine.transpose(1, 2).double()
    # the reference restricted to the two examples: the second one's queries see only its own keys
    second = gattn.F.scaled_dot_product_attention(q[:, :, 40:].double(), k[:, :, 40:].double(), v[:, :, 40:].double(),
                                                  is_causal=True, enable_gqa=True)
    ref = torch.cat([ref[:, :, :40], second], dim=2)
    sdpa = torch.cat([sdpa[:, :, :40], gattn.F.scaled_dot_product_attention(
        q[:, :, 40:], k[:, :, 40:], v[:, :, 40:], is_causal=True, enable_gqa=True)], dim=2).double()
    assert (mine - ref).abs().max() <= 1.5 * (sdpa - ref).abs().max()


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
    assert gattn._boundaries(q, kv, 0.0, None, cu, cu.clone(), {}) is not None  # equal boundaries, another tensor
    other = cu.clone()
    other[1] += 1
    assert gattn._boundaries(q, kv, 0.0, None, cu, other, {}) is None  # keys split otherwise than queries


def test_only_sdpa_is_replaced_and_the_saved_model_does_not_name_it(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    assert gattn.use_example_attention(eager).startswith("eager (the model's own")
    assert eager.config._attn_implementation == "eager"
    fixed = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    fixed._can_set_attn_implementation = lambda: False  # custom modeling code that calls its own attention
    assert gattn.use_example_attention(fixed).startswith("sdpa (left as it is")
    assert fixed.config._attn_implementation == "sdpa"
    model = _model(tiny_model, per_example=True)
    model.save_pretrained(tmp_path / "saved")
    assert gattn.ATTN_NAME not in (tmp_path / "saved" / "config.json").read_text()
    assert "_attn_implementation" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config._attn_implementation == "sdpa"
