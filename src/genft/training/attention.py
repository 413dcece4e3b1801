"""Attention in padding-free training batches: example by example, not over the whole packed row.

A padding-free batch (training.batching) is one row holding every example of the batch, with position ids
restarting at each example.  transformers' `sdpa` attention keeps the examples apart with a dense
block-diagonal mask over the whole row: every query is scored against every key of the row and most scores
are then thrown away, so attention costs (sum of lengths)^2 instead of sum(length^2).  In a batch of 8
examples of very different lengths that is most of the attention's work, in the forward pass and in backward.

`example_attention_forward` runs each example's own causal attention instead, from the sequence boundaries
TRL's padding-free collator passes with every batch (`cu_seq_lens_q`/`cu_seq_lens_k`, the varlen kernels'
input).  The result is the same function: no query ever saw a key of another example.  What runs per example is
torch's fused `scaled_dot_product_attention`, causal; on a CPU in float32 also where q, k and v are bf16/fp16
(half-precision weights, or bf16 autocast, under which sdpa would cast them to bf16): the inputs are widened
and the result rounded back to their dtype.  On a CPU the fused kernel's bf16 backward is no faster than its
float32 one (its matmuls are small, and it converts its inputs), and float32 scores keep a sharp softmax
accurate: two bf16 matmuls with the softmax in float32 (transformers' eager attention) erred ten times more on
the same bf16 inputs.

Anything else the attention call could ask for (no boundaries: padded batches and generation; a batch of more
than one row; keys that are not the queries' own (a cache); attention dropout, a sliding window shorter than
an example, a logit softcap or attention sinks) goes to transformers' `sdpa` with its mask, unchanged.

`use_example_attention(model)` switches a model whose attention is `sdpa` to this function (its configuration
only: `_attn_implementation` is not saved with the model).  Training's padding-free check (training.batching)
then compares a padded batch (sdpa, with its mask) with the same batch flattened (this function): the two
must give the same loss before any batch is flattened.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "genft_examples"
# The only implementation this one replaces: the one whose results it reproduces, and its fallback.
REPLACES = "sdpa"


_last: list = [None, None, None]  # (cu_q, cu_k, their boundaries): every layer of a forward gets the same tensors


def _shared_bounds(cu_q: torch.Tensor, cu_k: torch.Tensor | None) -> list[int] | None:
    """cu_q as a list when cu_k (if given) holds the same boundaries, else None; read from their device once per
    forward rather than once per layer."""
    if _last[0] is not cu_q or _last[1] is not cu_k:
        bounds = [int(b) for b in cu_q.tolist()]
        same = cu_k is None or cu_k is cu_q or [int(b) for b in cu_k.tolist()] == bounds
        _last[:] = [cu_q, cu_k, bounds if same else None]
    return _last[2]


def _boundaries(query, key, dropout, sliding_window, cu_q, cu_k, kwargs) -> list[int] | None:
    """The examples' [start, end) boundaries when this call can run per example, else None."""
    if cu_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or dropout:
        return None
    if any(kwargs.get(name) is not None for name in ("softcap", "s_aux", "sinks")):
        return None
    bounds = _shared_bounds(cu_q, cu_k)
    if bounds is None:  # keys split otherwise than queries
        return None
    if bounds[0] != 0 or bounds[-1] != query.shape[2] or any(end <= start for start, end in zip(bounds, bounds[1:])):
        return None  # not a partition of this row: not what the collator made, so not ours to interpret
    if sliding_window is not None and max(b - a for a, b in zip(bounds, bounds[1:])) > sliding_window:
        return None
    return bounds


def example_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, heads, q, d], key/value [B, kv_heads, k, d];
    returns ([B, q, heads, d], None).  Per example where the call allows it, else `sdpa` (module docstring)."""
    bounds = _boundaries(query, key, dropout, sliding_window, cu_seq_lens_q, cu_seq_lens_k, kwargs)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, cu_seq_lens_q=cu_seq_lens_q,
                                      cu_seq_lens_k=cu_seq_lens_k, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    half = query.dtype
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        half = torch.get_autocast_dtype("cpu")  # what sdpa would run in (under autocast RoPE leaves q, k float32)
    upcast = query.device.type == "cpu" and half in (torch.bfloat16, torch.float16)
    with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():
        if upcast:
            query, key, value = query.float(), key.float(), value.float()
        outs = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                               scale=scale, enable_gqa=query.shape[1] != key.shape[1])
                for a, b in zip(bounds, bounds[1:])]
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.to(half if upcast else out.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, example_attention_forward)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # what the fallback needs; the per-example path ignores it


def use_example_attention(model: torch.nn.Module) -> str:
    """Switch `model` (before peft wraps it) to per-example attention where its attention is sdpa.

    Returns what the model's attention now is, for the manifest: ATTN_NAME, or the model's own implementation
    (left as it is) with the reason."""
    current = getattr(model.config, "_attn_implementation", None)
    if current != REPLACES:
        return f"{current} (the model's own: per-example attention replaces {REPLACES} only)"
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:  # transformers only warns where it cannot switch
        return f"{current} (left as it is: the model's code does not take its attention from transformers' interface)"
    return ATTN_NAME
