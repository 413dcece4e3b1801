"""Training numerics on the CPU: LoRA's dropout masks (genft.training.dropout) and a bfloat16 base under LoRA."""
from __future__ import annotations

import math

import pytest
import torch

torch.set_num_threads(1)

from finetune_setup import _cfg, _quiet, without_cpu_bf16  # noqa: E402

from genft import training  # noqa: E402
from genft.precision import cpu_bf16_missing  # noqa: E402
from genft.training import config as tconfig  # noqa: E402
from genft.training.config import ConfigError, FinetuneConfig  # noqa: E402
from genft.training.dropout import MaskDropout, keep_mask, use_mask_dropout  # noqa: E402

NATIVE_BF16 = pytest.mark.skipif(bool(cpu_bf16_missing()), reason=f"no native bf16 on this CPU: {cpu_bf16_missing()}")


# ---------------------------------------------------------------- the masks


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_masks_drop_at_the_rate_asked(p):
    torch.manual_seed(0)
    n = 400_000
    dropped = 1.0 - keep_mask(torch.Size([n]), p, torch.device("cpu")).double().mean().item()
    exact = round(p * 65536) / 65536
    assert abs(exact - p) <= 2**-17
    assert abs(dropped - exact) < 5 * math.sqrt(exact * (1 - exact) / n)  # 5 standard errors


def test_masks_are_independent_across_the_four_draws_of_a_word():
    """Four 16-bit draws share one 64-bit word: each position in the word must drop at the rate, and a value's
    neighbour must not predict it (a sign bit left at 0, or a reused half, would show here)."""
    torch.manual_seed(1)
    keep = keep_mask(torch.Size([4 * 100_000]), 0.3, torch.device("cpu")).view(-1, 4).double()
    for lane in range(4):
        assert keep[:, lane].mean().item() == pytest.approx(0.7, abs=0.01)
    both = (keep[:, 0] * keep[:, 1]).mean().item()
    assert both == pytest.approx(0.49, abs=0.01)


def test_dropout_scales_kept_values_and_passes_gradients_through_them_only():
    torch.manual_seed(2)
    x = torch.randn(3, 50, 40, requires_grad=True)
    drop = MaskDropout(0.25).train()
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert drop.eval()(x) is x  # no dropout outside training
    assert MaskDropout(0.0).train()(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_values_are_scaled_in_one_rounding(dtype):
    """The kept values are x * (1 / (1 - p)) rounded once to x's dtype (as where(keep, x * scale, 0) computes
    them), not x times a scale first rounded to bf16; the dropped ones are zero."""
    x = torch.randn(64, 96).to(dtype)
    torch.manual_seed(4)
    y = MaskDropout(0.05).train()(x)
    torch.manual_seed(4)
    keep = keep_mask(x.shape, 0.05, x.device)
    assert torch.equal(y, torch.where(keep, x * (1.0 / 0.95), torch.zeros((), dtype=dtype)))
    assert not torch.equal(y[keep], x[keep] * torch.tensor(1.0 / 0.95, dtype=dtype)) or dtype == torch.float32


def test_same_seed_same_masks_and_bf16_inputs_keep_their_dtype():
    x = torch.randn(8, 64)
    torch.manual_seed(3)
    a = MaskDropout(0.1).train()(x)
    torch.manual_seed(3)
    b = MaskDropout(0.1).train()(x)
    assert torch.equal(a, b)
    assert MaskDropout(0.1).train()(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dropout probability 1.0"):
        MaskDropout(1.0)


def test_every_lora_adapter_gets_the_masks(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    adapters = [m for m in peft_model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert adapters and use_mask_dropout(peft_model) == len(adapters)
    assert all(isinstance(m.lora_dropout["default"], MaskDropout) and m.lora_dropout["default"].p == 0.1
               for m in adapters)
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    assert use_mask_dropout(plain) == 0  # p 0: peft's identities stay


def test_the_recipe_hash_names_the_masks_of_a_lora_recipe_with_dropout(tiny_model, data_root, tmp_path, monkeypatch):
    lora = _cfg(tiny_model, data_root, tmp_path, use_peft=True, lora_dropout=0.05)
    no_drop = _cfg(tiny_model, data_root, tmp_path, use_peft=True, lora_dropout=0.0)
    full = _cfg(tiny_model, data_root, tmp_path)
    files = {"train.jsonl": "0" * 64}
    before = {k: tconfig.config_hash(c, files) for k, c in (("lora", lora), ("no_drop", no_drop), ("full", full))}
    monkeypatch.setattr(tconfig, "LORA_DROPOUT_MASKS", "other masks")
    after = {k: tconfig.config_hash(c, files) for k, c in (("lora", lora), ("no_drop", no_drop), ("full", full))}
    assert before["lora"] != after["lora"]  # other masks, another recipe
    assert before["no_drop"] == after["no_drop"] and before["full"] == after["full"]


@pytest.mark.slow
def test_a_lora_run_trains_with_the_masks_and_says_so(tiny_model, data_root, tmp_path):
    cfg = _cfg(tiny_model, data_root, tmp_path / "out", use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.1,
               lora_target_modules=["all-linear"])
    man = training.run(cfg, log=_quiet)
    assert man.training.lora_dropout.endswith(f"p 0.1, {tconfig.LORA_DROPOUT_MASKS}")
    again = training.run(FinetuneConfig(**{**training.config_dict(cfg), "output_dir": str(tmp_path / "again")}),
                         log=_quiet)
    assert again.weights_sha256 == man.weights_sha256  # same seed, same masks, same weights


# ---------------------------------------------------------------- a bfloat16 base under LoRA


def test_bf16_weights_are_refused_for_full_fine_tuning_and_fp16_on_a_cpu(tiny_model, data_root, tmp_path):
    with pytest.raises(ConfigError, match="only LoRA keeps a bfloat16 base"):
        training.device_settings(_cfg(tiny_model, data_root, tmp_path, dtype="bfloat16"))
    with pytest.raises(ConfigError, match="float16 weights are not supported"):
        training.device_settings(_cfg(tiny_model, data_root, tmp_path, dtype="float16", use_peft=True))
    with pytest.raises(ConfigError, match="bf16: false"):
        training.device_settings(_cfg(tiny_model, data_root, tmp_path, dtype="bfloat16", use_peft=True, bf16=False))


@NATIVE_BF16
def test_lora_on_a_bf16_base_keeps_float32_adapters(tiny_model, data_root, tmp_path):
    """dtype bfloat16 with LoRA on a CPU: the frozen base in bf16, the adapters (trained, with their optimizer
    state) in float32, bf16 autocast on; the manifest says so and the loss is the float32 base's within bf16
    rounding."""
    kw = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["all-linear"])
    dev = training.device_settings(_cfg(tiny_model, data_root, tmp_path, dtype="bfloat16", **kw))
    assert dev["bf16"] is True and dev["dtype"] == "bfloat16" and "frozen base weights bfloat16" in dev["precision"]
    seen: dict = {}

    def record(module, args, output):
        if module.training:  # the training steps (the padding-free check runs the plain model in eval mode)
            for p in module.parameters(recurse=False):
                seen.setdefault(p.requires_grad, set()).add(p.dtype)
                if p.requires_grad:  # an adapter's matmul: what it is fed (peft's cast to float32 is off)
                    seen.setdefault("adapter inputs", set()).add(args[0].dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        bf = training.run(_cfg(tiny_model, data_root, tmp_path / "bf", dtype="bfloat16", **kw), log=_quiet)
    finally:
        hook.remove()
    assert seen[True] == {torch.float32} and seen[False] == {torch.bfloat16}, seen
    assert seen["adapter inputs"] == {torch.bfloat16}, seen
    fp = training.run(_cfg(tiny_model, data_root, tmp_path / "fp", **kw), log=_quiet)
    assert bf.config_hash != fp.config_hash
    assert bf.device.precision.startswith("bf16 mixed precision") and bf.training.mixed_precision == "bf16"
    assert bf.training.loss_curve[0][1] == pytest.approx(fp.training.loss_curve[0][1], rel=2e-2)


def test_a_bf16_base_is_refused_on_a_cpu_without_native_bf16(tiny_model, data_root, tmp_path, monkeypatch):
    """The same refusal as `bf16: true` gets there, naming the setting that asked for bf16."""
    without_cpu_bf16(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="dtype: bf16 on this CPU is refused"):
        training.run(_cfg(tiny_model, data_root, out, dtype="bfloat16", use_peft=True), log=_quiet)
    assert not out.exists()  # refused before anything is written
