"""Packed rows: genft's own attention and KV layout for `genft-hf` -- a shared prefix kept once, rows with their
own lengths (greedy decoding over them: `packed_decode`).

transformers' attention interface lets a model's attention layers call a registered function instead of
sdpa/eager.  `genft-hf` registers `genft_rows` and switches a model to it only inside `rows_attention(model)`,
for its own forward calls; every other caller of the model (lm-eval's `hf` code paths, training) is untouched.

What the function computes is ordinary softmax attention (the model's own scaling, attention-logit softcap
and sliding window), but over a layout that transformers' caches cannot express:

* a shared prefix (batch 1, p tokens, computed once) that every row attends to without being copied per row;
* per row, its own keys: in `prefill` a packed sequence of several rows (segment ids keep them apart, so a
  short row costs what it is, not the longest row's length); in `decode` a preallocated buffer where each row
  has its own length and a new token is written at that row's end; in `masked` an explicit visibility matrix
  (the loglikelihood trie).

The visibility of every (query, key) pair is computed from absolute positions, so a sliding window
(`kv_pos > q_pos - window`, transformers' rule) applies exactly whatever the layout: keys are never dropped,
only masked, which is why a cached prefix stays valid for sliding-window layers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

ATTN_NAME = "genft_rows"


@dataclass
class RowState:
    """What `rows_attention_forward` needs beyond the query/key/value tensors, for one forward call.

    mode "prefill": batch 1; the call's T keys are a packed sequence of segments `spans`, `q_pos` [T] absolute
    positions; a query sees the prefix and the earlier keys of its own segment.
    mode "decode": batch A, q queries per row (q > 1: the row's next token and draft tokens to verify); `lens`
    [A] = keys per row up to and including the first new one, `q_pos` [A, q]; query j sees `lens + j` keys.
    mode "masked": batch B, queries [B, q]; `allowed` [B, q, q] visibility among the call's keys, `q_pos` [B, q].
    With B == 1 and `spans`, `allowed` is block-diagonal over the spans (a packed batch of rows that never see
    each other): attention then runs per span, over [prefix | that span's keys] only.
    """

    mode: str
    q_pos: torch.Tensor
    prefix: list | None = None  # per layer (key, value) [1, kv_heads, p, head_dim], or None
    spans: list[tuple[int, int]] | None = None  # prefill, masked: [start, end) of each packed segment
    lens: torch.Tensor | None = None
    allowed: torch.Tensor | None = None
    calls: int = 0  # attention layers that ran with this state (the probe checks that every layer did)
    _masks: dict = field(default_factory=dict)  # (kind, window) -> bool mask, shared by the layers of one call

    @property
    def p(self) -> int:
        return 0 if not self.prefix else int(self.prefix[0][0].shape[2])

    def row_mask(self, n_keys: int, window: int | None) -> torch.Tensor:
        """Visibility of the call's own keys: [B, q, n_keys] (bool)."""
        key = ("row", window, n_keys)
        if key not in self._masks:
            if self.mode == "decode":
                t = torch.arange(n_keys, device=self.q_pos.device)
                j = torch.arange(self.q_pos.shape[1], device=self.q_pos.device)
                m = t[None, None, :] < (self.lens[:, None] + j[None, :])[:, :, None]  # [A, q, n_keys]
                k_pos, q_pos = (self.p + t)[None, None, :], self.q_pos[:, :, None]
            else:
                m = self.allowed  # [B, q, q]
                k_pos, q_pos = self.q_pos[:, None, :], self.q_pos[:, :, None]
            if window is not None:
                m = m & (k_pos > q_pos - window)
            self._masks[key] = m
        return self._masks[key]

    def segment_mask(self, a: int, b: int, window: int | None) -> torch.Tensor:
        """Prefill: visibility of [prefix | segment a:b] for the segment's queries, [1, 1, b - a, p + b - a]."""
        key = ("seg", a, b, window)
        if key not in self._masks:
            q_pos = self.q_pos[a:b]
            k_pos = torch.cat([torch.arange(self.p, device=q_pos.device), q_pos])
            m = k_pos[None, :] <= q_pos[:, None]
            if window is not None:
                m = m & (k_pos[None, :] > q_pos[:, None] - window)
            self._masks[key] = m[None, None]
        return self._masks[key]

    def visible(self, n_keys: int, window: int | None) -> torch.Tensor:
        """Visibility of [prefix | the call's own keys]: [B|1, q, p + n_keys] (bool), built once per call."""
        key = ("all", window, n_keys)
        if key not in self._masks:
            m = self.row_mask(n_keys, window)
            if self.p:
                pm = self.prefix_mask(window)
                if pm is None:
                    pm = torch.ones((1, 1, self.p), dtype=torch.bool, device=m.device)
                b = max(m.shape[0], pm.shape[0])
                m = torch.cat([pm.expand(b, m.shape[1], -1), m.expand(b, -1, -1)], dim=-1)
            self._masks[key] = m
        return self._masks[key]

    def span_visible(self, n_keys: int, window: int | None, a: int, b: int) -> torch.Tensor:
        """Masked mode with spans: visibility of [prefix | span a:b's keys] for the span's queries,
        [1, 1, b - a, p + b - a] (a block of `visible`)."""
        key = ("span", window, n_keys, a, b)
        if key not in self._masks:
            vis, p = self.visible(n_keys, window), self.p
            self._masks[key] = torch.cat([vis[:, a:b, :p], vis[:, a:b, p + a : p + b]], dim=-1)[:, None]
        return self._masks[key]

    def prefix_mask(self, window: int | None) -> torch.Tensor | None:
        """Visibility of the shared prefix: None (all visible) or [B or 1, q, p] (bool)."""
        if window is None or self.p == 0:
            return None
        key = ("prefix", window)
        if key not in self._masks:
            k_pos = torch.arange(self.p, device=self.q_pos.device)
            q = self.q_pos if self.q_pos.dim() == 2 else self.q_pos[None] if self.mode == "prefill" else self.q_pos[:, None]
            self._masks[key] = k_pos[None, None, :] > q[:, :, None] - window
        return self._masks[key]


def _attend(query, key, value, visible, scale, softcap, causal: bool = False) -> torch.Tensor:
    """Softmax attention of query [B, heads, q, d] over key/value [B, kv_heads, n, d] (kv heads shared by
    consecutive query heads, as repeat_kv lays them out); visible [B|1, 1, q, n] bool or None with causal."""
    if softcap is None:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=None if causal else visible, is_causal=causal, scale=scale,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    bsz, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query.reshape(bsz, kv_heads, groups * q_len, dim)
    scores = torch.matmul(q, key.transpose(2, 3)).float() * scale
    scores = torch.tanh(scores / softcap) * softcap
    if causal:
        visible = torch.ones(q_len, key.shape[2], dtype=torch.bool, device=q.device).tril(key.shape[2] - q_len)[None, None]
    scores = scores.view(bsz, kv_heads, groups, q_len, -1).masked_fill(~visible[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(bsz, kv_heads, groups * q_len, -1)
    return torch.matmul(probs, value).view(bsz, heads, q_len, dim)


def _with_prefix(prefix, key, value):
    """key/value [1, kv_heads, n, d] after the shared prefix's [1, kv_heads, p, d], when there is one."""
    if prefix is None:
        return key, value
    return torch.cat([prefix[0], key], dim=2), torch.cat([prefix[1], value], dim=2)


def _attend_rows(query, key, value, prefix, visible, scale, softcap) -> torch.Tensor:
    """Batched rows (B > 1) that all see one shared prefix, which is never copied per row: the scores against
    the prefix and against each row's own keys are separate GEMMs, softmaxed together.  query [B, heads, q, d],
    key/value [B, kv_heads, n, d], visible [B|1, q, p + n] bool; returns [B, heads, q, d]."""
    bsz, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # Heads h = kv * groups + g share kv head `kv` (transformers' repeat_kv layout).
    q = query.reshape(bsz, kv_heads, groups * q_len, dim)
    parts = []
    pre = None
    if prefix is not None:
        pk, pv = prefix
        p = pk.shape[2]
        # One GEMM per kv head for the whole batch: [kv, B*g*q, d] @ [kv, d, p].
        qp = q.transpose(0, 1).reshape(kv_heads, bsz * groups * q_len, dim)
        pre = torch.bmm(qp, pk[0].transpose(1, 2)).view(kv_heads, bsz, groups * q_len, p).transpose(0, 1)
        parts.append(pre)
    own = torch.matmul(q, key.transpose(2, 3))  # [B, kv, g*q, n]
    parts.append(own)
    scores = torch.cat(parts, dim=-1) if len(parts) > 1 else own
    scores = scores.float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    n = key.shape[2]
    scores = scores.view(bsz, kv_heads, groups, q_len, -1)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(bsz, kv_heads, groups * q_len, -1)
    out = torch.matmul(probs[..., -n:], value)
    if pre is not None:
        pp = probs[..., :p].transpose(0, 1).reshape(kv_heads, bsz * groups * q_len, p)
        out = out + torch.bmm(pp, pv[0]).view(kv_heads, bsz, groups * q_len, dim).transpose(0, 1)
    return out.view(bsz, heads, q_len, dim)


def rows_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    genft_rows: RowState | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over [shared prefix | the call's own keys] with masks from `genft_rows` (see RowState).

    query [B, heads, q, d]; key/value [B, kv_heads, n, d] (what the RowCache returned for this layer).
    Returns [B, q, heads, d] as transformers' attention functions do.
    """
    state = genft_rows
    if state is None:
        raise RuntimeError("genft_rows attention called without a RowState: use genft.packed_rows.rows_attention")
    for name in ("s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"genft_rows attention: attention sinks ({name}) are not supported")
    state.calls += 1
    bsz, dim = query.shape[0], query.shape[3]
    scale = dim**-0.5 if scaling is None else scaling
    prefix = state.prefix[module.layer_idx] if state.prefix else None
    if state.mode == "prefill":  # batch 1, one packed segment after another: attention per segment
        causal = prefix is None and sliding_window is None
        outs = []
        for a, b in state.spans:
            k, v = _with_prefix(prefix, key[:, :, a:b], value[:, :, a:b])
            vis = None if causal else state.segment_mask(a, b, sliding_window)
            outs.append(_attend(query[:, :, a:b], k, v, vis, scale, softcap, causal))
    elif bsz == 1 and state.spans:  # packed rows that never see each other: attention per row
        outs = []
        for a, b in state.spans:
            k, v = _with_prefix(prefix, key[:, :, a:b], value[:, :, a:b])
            vis = state.span_visible(key.shape[2], sliding_window, a, b)  # [1, 1, b - a, p + b - a]
            outs.append(_attend(query[:, :, a:b], k, v, vis, scale, softcap))
    elif bsz == 1:  # one (packed) row: the prefix is joined to its keys, no copy per row to save
        k, v = _with_prefix(prefix, key, value)
        vis = state.visible(key.shape[2], sliding_window)[:, None]  # [1, 1, q, p + n]
        outs = [_attend(query, k, v, vis, scale, softcap)]
    else:  # rows of their own lengths (decode, masked): the prefix is kept once, not copied per row
        vis = state.visible(key.shape[2], sliding_window)  # [B|1, q, p + n]
        outs = [_attend_rows(query, key, value, prefix, vis, scale, softcap)]
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, rows_attention_forward)


_register()


@contextlib.contextmanager
def rows_attention(model: torch.nn.Module):
    """Within the block, every attention module of `model` calls `rows_attention_forward`; restored after."""
    configs = {}
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            configs[id(cfg)] = cfg
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs.values()]
    try:
        for cfg, _ in saved:
            cfg._attn_implementation_internal = ATTN_NAME
        yield
    finally:
        for cfg, old in saved:
            cfg._attn_implementation_internal = old


# --------------------------------------------------------------------------- the cache


from transformers.cache_utils import Cache  # noqa: E402


class RowCache(Cache):
    """The per-row part of the KV layout (the shared prefix lives in RowState.prefix).

    In "prefill"/"masked" calls `update` keeps the call's new keys/values (`new[layer]`) and returns them.
    In "decode" calls it writes each row's q new keys from that row's length on in preallocated buffers
    [capacity, kv_heads, max_len, d] and returns the buffers of the active rows up to the longest row.
    """

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bufs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.mode = "prefill"
        self.active = 0
        self.write_at: torch.Tensor | None = None  # [active] positions of the new keys (decode)
        self.span = 0  # keys returned per row in decode (the longest active row)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.mode != "decode":
            self.new[layer_idx] = (key_states, value_states)
            return key_states, value_states
        kb, vb = self.bufs[layer_idx]
        rows = torch.arange(self.active, device=kb.device)
        # advanced indices on dims 0 and 2 around a slice: the selection is [A, q, kv_heads, d]
        at = self.write_at[:, None] + torch.arange(key_states.shape[2], device=kb.device)[None, :]
        kb[rows[:, None], :, at] = key_states.transpose(1, 2)
        vb[rows[:, None], :, at] = value_states.transpose(1, 2)
        return kb[: self.active, :, : self.span], vb[: self.active, :, : self.span]

    def new_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The last prefill call's keys/values, one (key, value) per layer in layer order."""
        if sorted(self.new) != list(range(len(self.new))):
            raise RuntimeError(f"genft RowCache: layers {sorted(self.new)} updated; expected 0..n-1")
        return [self.new[i] for i in range(len(self.new))]

    def allocate(self, like: list[tuple[torch.Tensor, torch.Tensor]], capacity: int, max_len: int) -> None:
        self.bufs = []
        for k, v in like:
            self.bufs.append((k.new_zeros((capacity, k.shape[1], max_len, k.shape[3])),
                              v.new_zeros((capacity, v.shape[1], max_len, v.shape[3]))))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.span

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.span + query_length, 0
