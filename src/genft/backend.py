"""`genft-hf`: lm-eval's `hf` model with shared-prefix KV reuse -- same requests, same scores, less compute.

With the study's fixed first-k demonstrations every item of a test set starts with the same demonstrations,
and every label of an item shares the item's prompt.  lm-eval's `hf` model recomputes all of it for every
(item, label) pair.  `GenftHFLM` (registered as `genft-hf`) is a subclass of `lm_eval.models.huggingface.HFLM`:
same `model_args` (pretrained, peft, dtype, device, batch_size, ...), same tokenization (HFLM's own
`_encode_pair` / `tok_encode` path, with each distinct string encoded once per loglikelihood call instead of
once per label), same (logprob, is_greedy) and greedy texts, but:

* Shared prefixes.  The distinct contexts of a call are sorted by token ids and cut into groups whose
  longest common token prefix is worth sharing (`plan_prefix_groups`: an exact cost model over the sorted
  order, nothing task-specific).  Each group's prefix is run once (batch 1) and kept once: genft's own
  attention (`genft.engine`, switched on only for this backend's forward calls) lets every row attend to it
  without copying it per row, and applies causal masks and sliding windows from absolute positions, so a
  cached prefix stays exact for sliding-window layers too (keys are masked, never dropped).
* loglikelihood: requests are grouped by context.  Each distinct context contributes its suffix (after the
  shared prefix) followed by a trie of all its continuations' tokens but the last; a batch of contexts is
  packed into one sequence (no padding) with a block-diagonal "tree" visibility matrix (every continuation token sees the context and its own trie ancestors) and
  matching position ids.  So every item is ONE forward pass, whatever its number of labels and whether
  they are one token ("ent") or several ("entailment"); the vocabulary projection (lm_head) and the
  log-softmax run only at the scored positions.
* generate_until (greedy): up to `gen_batch_size` rows decode together; a row that hits EOS, a stop
  sequence or max_gen_toks leaves at once and a waiting row (longest first) takes its slot, prefilled with
  other newcomers as one packed sequence (no padding).  Each row's KV lives in a preallocated buffer at its
  own length, so a step costs the live rows only.  While few rows are live, a step also verifies draft tokens
  (the tokens that followed the row's last n-gram earlier in its own context) and keeps every correct one, so
  a long tail of a few rows takes fewer steps, with the same greedy tokens.  Texts are cut by lm-eval's own
  `postprocess_generated_text`, so stop-sequence handling matches `hf` exactly.
* Anything the fast path does not cover (sampling, beam search, logits processors from the generation
  config, seq2seq models, models whose attention does not go through transformers' attention interface,
  attention sinks) is delegated to `HFLM` itself, so results never silently change: the first call checks
  genft's attention against the model's own forward (`_probe_rows_attention`).

Registration: importing this module registers `genft-hf` with lm-eval's model registry (Python API:
`import genft.backend` then `simple_evaluate(model="genft-hf", ...)`).  lm-eval 0.4.13 has no plugin
discovery, and its CLI builds the model before it imports any task `utils.py`, so for the command line run
`python -m genft.backend <lm_eval run arguments>` (same arguments as `lm_eval run`/`lm_eval`).
"""
from __future__ import annotations

import inspect
import json
import logging
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from genft.engine import RowCache, RowState, greedy_decode, rows_attention

import lm_eval.models  # noqa: F401  (registers lm-eval's own lazy models first: get_model() skips that once ours exists)
from lm_eval.api.registry import model_registry
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

eval_logger = logging.getLogger(__name__)

__all__ = ["GenftHFLM", "plan_prefix_groups", "common_prefix_len", "cli_evaluate"]


# --------------------------------------------------------------------------- shared-prefix planning


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


def plan_prefix_groups(
    seqs: Sequence[Sequence[int]], min_prefix: int = 8, overhead: int = 16, keep: int = 1
) -> list[tuple[int, list[int]]]:
    """Partition sequences into groups that share a token prefix worth computing once.

    Returns [(prefix_len, [indices into seqs])]; every member of a group starts with the same prefix_len
    tokens and keeps at least `keep` tokens after it.  The partition minimises the tokens to compute
    (prefix once + every member's suffix, plus `overhead` per shared prefix) over splits of the
    lexicographically sorted order at its common-prefix boundaries.  A prefix shorter than `min_prefix`
    is not shared (prefix_len 0).
    """
    n = len(seqs)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: tuple(seqs[i]))
    lens = [len(seqs[i]) for i in order]
    adj = [common_prefix_len(seqs[order[i]], seqs[order[i + 1]]) for i in range(n - 1)]

    def whole(lo: int, hi: int) -> tuple[float, int]:
        if hi - lo == 1:
            return float(lens[lo]), 0
        lcp = min(adj[lo : hi - 1])
        p = min(lcp, min(lens[lo:hi]) - keep)
        total = float(sum(lens[lo:hi]))
        if p < min_prefix:
            return total, 0
        return total - (hi - lo - 1) * p + overhead, p

    def best(lo: int, hi: int, depth: int) -> tuple[float, list[tuple[int, int, int]]]:
        cost, p = whole(lo, hi)
        plan = [(p, lo, hi)]
        if hi - lo > 1 and depth < 200:
            lcp = min(adj[lo : hi - 1])
            cuts = [i + 1 for i in range(lo, hi - 1) if adj[i] == lcp]
            split_cost, split_plan = 0.0, []
            for a, b in zip([lo] + cuts, cuts + [hi]):
                c, pl = best(a, b, depth + 1)
                split_cost += c
                split_plan += pl
                if split_cost >= cost:
                    break
            if split_cost < cost:
                return split_cost, split_plan
        return cost, plan

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 1000))
    try:
        _, plan = best(0, n, 0)
    finally:
        sys.setrecursionlimit(old)
    groups = []
    for p, lo, hi in plan:
        members = [order[i] for i in range(lo, hi)]
        if p == 0 and groups and groups[-1][0] == 0:
            groups[-1][1].extend(members)  # unshared neighbours batch together
        else:
            groups.append((p, members))
    return groups


# --------------------------------------------------------------------------- the model


class GenftHFLM(HFLM):
    """HFLM with shared-prefix KV reuse; a drop-in for lm-eval's `hf` model (same model_args, same scores).

    Extra model_args: `prefix_min_tokens` (default 8): shortest common token prefix worth sharing;
    `gen_batch_size` (default max(batch_size, 32)): rows generate_until decodes at once (each row's KV buffer
    holds its prompt after the shared prefix plus max_gen_toks: lower it if memory is short);
    `draft_tokens` (default 8): while few rows are left decoding, each also feeds up to this many draft tokens
    (prompt lookup) that the step verifies (genft.engine.greedy_decode: same greedy tokens, fewer steps); 0: off;
    `fast` (default True): False delegates everything to HFLM (for A/B checks);
    `cut_at_blank_line` (default False): for tasks that strip a generation, then cut it at its first blank line
    and score only what comes before (genft's generation tasks, the study's rule: genft.metrics.clean_generation),
    a row stops as soon as its stripped text has some text followed by a blank line.  Exact for such tasks: every
    further token would be cut off anyway, so the stripped-and-cut text (the one scored and stored) is the one
    `hf` gives; the raw text returned is the shorter one.  Used only when no stop sequence contains a newline
    (one could straddle the cut).  genft.harness turns it on for genft-hf.
    """

    def __init__(self, *args, prefix_min_tokens: int = 8, fast: bool = True, gen_batch_size: int | None = None,
                 cut_at_blank_line: bool = False, draft_tokens: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cut_at_blank_line = cut_at_blank_line if isinstance(cut_at_blank_line, bool) \
            else str(cut_at_blank_line).lower() in ("1", "true", "yes")
        self.prefix_min_tokens = int(prefix_min_tokens)
        # Rows decoded together by generate_until (refilled as rows finish); batch_size still sets loglikelihood.
        self.gen_batch_size = int(gen_batch_size) if gen_batch_size else max(self._rows_per_batch(), 32)
        self.fast = fast if isinstance(fast, bool) else str(fast).lower() in ("1", "true", "yes")
        self.draft_tokens = int(draft_tokens)
        # Work counters (forward calls, tokens run, prefixes shared, lm_head rows): tests and benchmarks read them.
        self.stats: Counter = Counter()
        self._fast_reason: str | None = None

    # ------------------------------------------------------------------ model plumbing

    def _causal_lm(self):
        model = self.model
        get_base = getattr(model, "get_base_model", None)  # peft.PeftModel: LoRA layers are injected in place
        return get_base() if callable(get_base) else model

    def _fast_ok(self) -> bool:
        if not self.fast:
            return False
        if self._fast_reason is None:
            reason = ""
            lm = self._causal_lm()
            if self.backend != "causal":
                reason = "not a causal LM"
            elif getattr(self, "accelerator", None) is not None and self.world_size > 1:
                reason = "data parallel"
            else:
                decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
                if decoder is None or lm.get_output_embeddings() is None:
                    reason = "no decoder / lm_head"
                else:
                    reason = self._probe_rows_attention()
            if reason:
                eval_logger.warning("genft-hf: fast path off (%s); delegating to HFLM", reason)
            self._fast_reason = reason
        return not self._fast_reason

    def _probe_rows_attention(self, n: int = 40, p: int = 13) -> str:
        """Check once that genft's attention reproduces this model's own forward ("" if it does, else why not).

        A prefix of p tokens is cached, the other n - p tokens are run on it; their logits must match the
        model's plain forward (its own attention and masks, sliding windows included) over all n tokens, and
        every attention layer must have gone through genft's attention.
        """
        lm = self._causal_lm()
        vocab = lm.get_output_embeddings().weight.shape[0]
        ids = [(7 + 31 * i) % vocab for i in range(n)]
        try:
            with torch.no_grad(), self._autocast():
                want = lm(input_ids=torch.tensor([ids], device=self.device)).logits[0, p:].float()
            kv = self._prefix_kv(ids[:p])
            pos = torch.arange(p, n, device=self.device)[None]
            allowed = torch.ones(n - p, n - p, dtype=torch.bool, device=self.device).tril()[None]
            state = RowState("masked", q_pos=pos, prefix=kv, allowed=allowed)
            with rows_attention(lm):
                hidden = self._decode_hidden(torch.tensor([ids[p:]], device=self.device), None, pos, None,
                                             genft_rows=state)
            got = self._head(hidden[0]).float()
        except Exception as exc:  # noqa: BLE001
            return f"genft attention failed on this model: {type(exc).__name__}: {exc}"
        finally:
            for key in ("forward_calls", "forward_positions", "head_rows", "prefix_forwards", "prefix_tokens"):
                self.stats.pop(key, None)
        if state.calls == 0 or state.calls != len(kv):
            return f"the model's attention layers do not use transformers' attention interface ({state.calls} calls)"
        err = float((got - want).abs().max())
        tol = self._probe_tolerance() * max(1.0, float(want.abs().max()))
        if not err <= tol:
            return f"genft attention differs from the model's own forward (max |d logit| {err:.2e} > {tol:.2e})"
        return ""

    def _probe_tolerance(self) -> float:
        """How far (relative to the largest logit) genft's attention may differ from the model's forward in the
        probe: 1e-3 in float32 (measured: 2e-6 relative), 8 eps of a half-precision compute dtype (bf16: 0.0625;
        measured: 0.035 / 0.0625 on the tiny models, 0.625 at logits up to 32.5 on SmolLM2-135M, 2.5 eps, from
        other summation orders).  A structural defect is far larger: the sliding window ignored on cached keys
        moves the tiny sliding-window model's logits by 3.07 (45% of its largest), in float32 and bf16 alike."""
        dtype = self.mixed_precision_dtype or self._causal_lm().get_output_embeddings().weight.dtype
        if not dtype.is_floating_point or torch.finfo(dtype).bits > 16:
            return 1e-3
        return 8 * torch.finfo(dtype).eps

    def _parts(self):
        cached = getattr(self, "_parts_cache", None)
        if cached is not None and cached[0] is self._causal_lm():
            return cached
        lm = self._causal_lm()
        decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
        head = lm.get_output_embeddings()
        params = inspect.signature(decoder.forward).parameters
        cache_kw = "cache" if "cache" in params else "past_key_values"
        self._parts_cache = (lm, decoder, head, cache_kw)
        return self._parts_cache

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def _decode_hidden(self, input_ids, attention_mask, position_ids, cache=None, **extra) -> torch.Tensor:
        """Run the decoder stack (no lm_head); returns last hidden states [batch, seq, hidden]."""
        _, decoder, _, cache_kw = self._parts()
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=cache is not None
        )
        if cache is not None:
            kwargs[cache_kw] = cache
        self.stats["forward_calls"] += 1
        self.stats["forward_positions"] += int(input_ids.numel())
        with torch.no_grad(), self._autocast():
            return decoder(**kwargs, **extra).last_hidden_state

    def _rows_forward(self, ids, pos, state: RowState, cache: RowCache | None) -> torch.Tensor:
        """The decoder stack under genft's attention (call inside `rows_attention`)."""
        return self._decode_hidden(ids, None, pos, cache, genft_rows=state)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head on selected hidden states [n, hidden] -> logits [n, vocab], as the CausalLM forward does."""
        lm, _, head, _ = self._parts()
        self.stats["head_rows"] += int(hidden.shape[0])
        with torch.no_grad(), self._autocast():
            logits = head(hidden)
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        scale = getattr(lm, "logit_scale", None)
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        return logits

    def _prefix_kv(self, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run a shared prefix once (batch 1); returns its per-layer (key, value) tensors, every position kept."""
        n = len(prefix)
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
        pos = torch.arange(n, device=self.device)
        state = RowState("prefill", q_pos=pos, spans=[(0, n)])
        cache = RowCache()
        with rows_attention(self._causal_lm()):
            self._rows_forward(ids, pos[None], state, cache)
        self.stats["prefix_forwards"] += 1
        self.stats["prefix_tokens"] += n
        return cache.new_kv()

    def _rows_per_batch(self, override_bs: int | None = None) -> int:
        bs = override_bs if override_bs else self.batch_size
        try:
            return max(1, int(bs))
        except (TypeError, ValueError):  # "auto": no OOM probing on this path
            return max(1, min(int(self.max_batch_size or 16), 16))

    # ------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """HFLM's loglikelihood, with each distinct string tokenized once per call: lm-eval encodes an item's
        context again for every label (`_encode_pair`), so a k-shot prompt was tokenized once per label."""
        self._tok_memo: dict | None = {}
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._tok_memo = None

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        memo = getattr(self, "_tok_memo", None)
        if memo is None or kwargs:
            return super().tok_encode(string, add_special_tokens=add_special_tokens,
                                      left_truncate_len=left_truncate_len, **kwargs)
        key = (string, add_special_tokens, left_truncate_len)
        if key not in memo:
            memo[key] = super().tok_encode(string, add_special_tokens=add_special_tokens,
                                           left_truncate_len=left_truncate_len)
        return list(memo[key])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not self._fast_ok():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        max_len = self.max_length
        ctx_index: dict[tuple[int, ...], int] = {}
        ctxs: list[tuple[int, ...]] = []
        conts: list[dict[tuple[int, ...], None]] = []
        req_keys: list[tuple[int, tuple[int, ...]]] = []
        for _, context_enc, continuation_enc in requests:
            assert len(context_enc) > 0 and len(continuation_enc) > 0
            assert len(continuation_enc) <= max_len
            # HFLM's input window: (ctx + cont)[-(max_length + 1):][:-1]; scored = the last len(cont) positions.
            whole = (list(context_enc) + list(continuation_enc))[-(max_len + 1) :]
            if len(context_enc) + len(continuation_enc) > max_len + 1:
                eval_logger.warning("genft-hf: context + continuation exceed max_length; truncating from the left")
            ctx = tuple(whole[: len(whole) - len(continuation_enc)])
            cont = tuple(continuation_enc)
            row = ctx_index.setdefault(ctx, len(ctxs))
            if row == len(ctxs):
                ctxs.append(ctx)
                conts.append({})
            conts[row][cont] = None
            req_keys.append((row, cont))

        answers: dict[tuple[int, tuple[int, ...]], tuple[float, bool]] = {}
        bs = self._rows_per_batch(override_bs)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0), desc="Running loglikelihood requests (genft-hf)")
        for p, members in plan_prefix_groups(ctxs, min_prefix=self.prefix_min_tokens):
            kv = self._prefix_kv(ctxs[members[0]][:p]) if p else None
            # Longest rows first (as HFLM): padding stays small within a batch.
            work = {r: len(ctxs[r]) - p + sum(len(c) - 1 for c in conts[r]) for r in members}
            members = sorted(members, key=lambda r: (-work[r], r))
            for start in range(0, len(members), bs):
                chunk = members[start : start + bs]
                for (row, cont), ans in self._score_rows(chunk, ctxs, conts, p, kv).items():
                    answers[(row, cont)] = ans
                pbar.update(sum(len(conts[r]) for r in chunk))
        pbar.close()

        res = []
        for (request_str, _, _), key in zip(requests, req_keys):
            ans = answers[key]
            res.append(ans)
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, ans)
        return res

    def _score_rows(self, rows, ctxs, conts, p, kv) -> dict:
        """One forward pass for a batch of distinct contexts and all their continuations (tree attention)."""
        device = self.device
        layouts = []  # per row: tokens, positions, parents (-1 = causal suffix), scored index lists
        for r in rows:
            suffix = list(ctxs[r][p:])
            s = len(suffix)
            tokens, positions = suffix[:], list(range(p, p + s))
            node_of: dict[tuple[int, int], int] = {}  # (parent node or -1, token) -> row index
            parent: list[int] = []  # for trie nodes: row index of the parent (or -1 = context end)
            scored = {}
            for cont in conts[r]:
                idx = [s - 1]  # the logits for cont[0] come from the last context position
                par = -1
                for depth, tok in enumerate(cont[:-1]):
                    key = (par, tok)
                    if key not in node_of:
                        node_of[key] = len(tokens)
                        tokens.append(tok)
                        positions.append(p + s + depth)
                        parent.append(par)
                    par = node_of[key]
                    idx.append(par)
                scored[cont] = idx
            layouts.append((tokens, positions, s, parent, scored))
        # The rows are packed into ONE sequence (no padding): each row's tokens see the shared prefix and their
        # own row only (block-diagonal visibility; RowState adds the sliding window where a layer has one).
        offsets, total = [], 0
        for tokens, *_ in layouts:
            offsets.append(total)
            total += len(tokens)
        ids = torch.empty((1, total), dtype=torch.long)
        pos = torch.empty((1, total), dtype=torch.long)
        allowed = torch.zeros((1, total, total), dtype=torch.bool)
        for (tokens, positions, s, parent, _), o in zip(layouts, offsets):
            n = len(tokens)
            ids[0, o : o + n] = torch.tensor(tokens)
            pos[0, o : o + n] = torch.tensor(positions)
            allowed[0, o : o + s, o : o + s] = torch.ones(s, s, dtype=torch.bool).tril()
            if n > s:
                allowed[0, o + s : o + n, o : o + s] = True  # continuation tokens see the whole context
                for j, par in enumerate(parent):  # ... and their own trie path
                    q = o + s + j
                    allowed[0, q, q] = True
                    while par != -1:
                        allowed[0, q, o + par] = True
                        par = parent[par - s]
        pos = pos.to(device)
        spans = [(o, o + len(layout[0])) for layout, o in zip(layouts, offsets)]
        state = RowState("masked", q_pos=pos, prefix=kv, allowed=allowed.to(device), spans=spans)
        self.stats["forward_tokens"] += total
        with rows_attention(self._causal_lm()):
            hidden = self._rows_forward(ids.to(device), pos, state, None)[0]

        # lm_head only where a continuation token is scored (deduplicated).
        flat: dict[tuple[int, int], int] = {}
        for b, (_, _, _, _, scored) in enumerate(layouts):
            for idx in scored.values():
                for q in idx:
                    flat.setdefault((b, q), len(flat))
        sel = torch.tensor([offsets[b] + q for b, q in flat], device=device)
        logprobs = F.log_softmax(self._head(hidden[sel]), dim=-1, dtype=self.softmax_dtype)
        greedy = logprobs.argmax(dim=-1)

        out = {}
        for b, r in enumerate(rows):
            for cont, idx in layouts[b][4].items():
                where = torch.tensor([flat[(b, q)] for q in idx], device=device)
                target = torch.tensor(cont, dtype=torch.long, device=device)
                lp = logprobs[where].gather(1, target[:, None]).squeeze(1)
                out[(r, cont)] = (float(lp.sum()), bool((greedy[where] == target).all()))
        return out

    # ------------------------------------------------------------------ generate_until

    def _greedy_supported(self, kwargs: dict) -> bool:
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) != 0.0:
            return False
        if set(kwargs) - {"do_sample", "temperature"}:
            return False  # top_p, num_beams, max_length, ...: let HFLM/transformers handle them
        gc = getattr(self._causal_lm(), "generation_config", None)
        if gc is None:
            return True
        neutral = {
            "num_beams": (None, 1),
            "repetition_penalty": (None, 1.0),
            "encoder_repetition_penalty": (None, 1.0),
            "no_repeat_ngram_size": (None, 0),
            "bad_words_ids": (None,),
            "min_length": (None, 0),
            "min_new_tokens": (None, 0),
            "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,),
            "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,),
            "sequence_bias": (None,),
            "exponential_decay_length_penalty": (None,),
            "guidance_scale": (None, 1.0),
            "watermarking_config": (None,),
            "renormalize_logits": (None, False),
        }
        return all(getattr(gc, k, None) in ok for k, ok in neutral.items())

    def _eos_ids(self) -> set[int]:
        gc = getattr(self._causal_lm(), "generation_config", None)
        eos = getattr(gc, "eos_token_id", None) if gc is not None else None
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def _gen_encode(self, context: str, max_ctx_len: int) -> list[int]:
        """Context tokens as HFLM.generate_until gets them: its tok_batch_encode, one row (no padding).  Going
        through tok_batch_encode lets genft.protocol_lm give the study protocol's ids to both backends."""
        ids, _ = self.tok_batch_encode([context], left_truncate_len=max_ctx_len or None, truncation=self.truncation)
        return ids[0].tolist()

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not self._fast_ok():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_kwargs[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        res: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0), desc="Running generate_until requests (genft-hf)")
        eos_str = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for indices in by_kwargs.values():
            gen_kwargs = requests[indices[0]].args[1]
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_str)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if not self._greedy_supported(kwargs):
                texts = super().generate_until([requests[i] for i in indices], disable_tqdm=True)
                for i, t in zip(indices, texts):
                    res[i] = t
                pbar.update(len(indices))
                continue
            max_ctx_len = self.max_length - max_gen_toks
            assert max_ctx_len > 0, "max_gen_toks must be less than the model's max_length"
            encs = [self._gen_encode(requests[i].args[0], max_ctx_len) for i in indices]
            finished = self._stop_rule(max_gen_toks, until)
            for p, members in plan_prefix_groups(encs, min_prefix=self.prefix_min_tokens):
                kv = self._prefix_kv(encs[members[0]][:p]) if p else None
                with rows_attention(self._causal_lm()):
                    outs = greedy_decode(
                        self._rows_forward, self._greedy_tokens, [encs[m][p:] for m in members], kv, max_gen_toks,
                        finished, device=self.device, capacity=self.gen_batch_size, stats=self.stats,
                        prefix_ids=encs[members[0]][:p], max_draft=self.draft_tokens,
                    )
                for m, toks in zip(members, outs):
                    i = indices[m]
                    res[i] = self._finish_text(toks, until)
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), res[i])
                pbar.update(len(members))
        pbar.close()
        return res  # type: ignore[return-value]

    def _finish_text(self, cont_toks: list[int], until: list[str]) -> str:
        """HFLM.generate_until's post-processing of one row's generated tokens."""
        if isinstance(self.think_end_token, int):
            hits = [i for i, t in enumerate(cont_toks) if t == self.think_end_token]
            if hits:
                cont_toks = cont_toks[hits[-1] + 1 :]
        s = self.tok_decode(cont_toks)
        if isinstance(self.think_end_token, int):
            s = s.lstrip()
        return postprocess_generated_text(
            generation=s,
            stop=until,
            think_end_token=self.think_end_token if isinstance(self.think_end_token, str) else None,
        )

    def _greedy_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """Greedy next tokens for hidden states [n, hidden] (argmax of the logits, as transformers' greedy search)."""
        return self._head(hidden).argmax(dim=-1)

    def _stop_rule(self, max_gen_toks: int, until: list[str]):
        """finished(tokens): a row ends at EOS, after max_gen_toks tokens, or once its decoded text contains a
        stop sequence (what lm-eval's MultiTokenEOSCriteria looks for; the text is cut there afterwards)."""
        eos = self._eos_ids()
        stops = [s for s in until if s]
        decode = self.tokenizer.decode
        eos_str = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        cut = (self.cut_at_blank_line and self.think_end_token is None
               and not any("\n" in s for s in stops if s != eos_str))

        def finished(toks: list[int]) -> bool:
            if toks[-1] in eos or len(toks) >= max_gen_toks:
                return True
            # decoded as _finish_text decodes it: some text, then a blank line, after the leading whitespace
            if cut and "\n\n" in self.tok_decode(toks).lstrip()[1:]:
                return True
            if not stops:
                return False
            text = decode(toks[-64:], skip_special_tokens=False)
            return any(s in text for s in stops)

        return finished

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["genft_backend"] = "genft-hf (shared-prefix KV reuse)"
        return info


# Registered as a lazy "module:Class" target, once: idempotent under re-import and under `python -m genft.backend`
# (whose __main__ copy of this file must not claim the name with a second class object).
if "genft-hf" not in model_registry:
    model_registry.register("genft-hf", target="genft.backend:GenftHFLM")


def cli_evaluate() -> None:
    """lm-eval's command line with `genft-hf` registered: `python -m genft.backend --model genft-hf ...`."""
    from lm_eval.__main__ import cli_evaluate as _cli

    _cli()


if __name__ == "__main__":
    import genft.backend  # noqa: F401  (the importable copy, which the registry entry names)

    cli_evaluate()
