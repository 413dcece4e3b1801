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
  attention (`genft.packed_rows`, switched on only for this backend's forward calls) lets every row attend to it
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

The parts: `prefix_groups` (which contexts share a prefix), `packed_rows` (the attention and KV buffers of
packed rows), `packed_decode` (greedy decoding over them), `backend_loglik` and `backend_generate` (the two
request kinds, mixins of `GenftHFLM`); this module holds the model plumbing they share and the registration.

Registration: importing this module registers `genft-hf` with lm-eval's model registry (Python API:
`import genft.backend` then `simple_evaluate(model="genft-hf", ...)`).  lm-eval 0.4.13 has no plugin
discovery, and its CLI builds the model before it imports any task `utils.py`, so for the command line run
`python -m genft.backend <lm_eval run arguments>` (same arguments as `lm_eval run`/`lm_eval`).
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter
from typing import Any, Sequence

import torch

from genft.backend_generate import GreedyRows
from genft.backend_loglik import LoglikelihoodRows
from genft.packed_rows import RowCache, RowState, rows_attention
from genft.prefix_groups import common_prefix_len, plan_prefix_groups

import lm_eval.models  # noqa: F401  (registers lm-eval's own lazy models first: get_model() skips that once ours exists)
from lm_eval.api.registry import model_registry
from lm_eval.models.huggingface import HFLM

eval_logger = logging.getLogger(__name__)

__all__ = ["GenftHFLM", "plan_prefix_groups", "common_prefix_len", "cli_evaluate"]


# --------------------------------------------------------------------------- the model


class GenftHFLM(LoglikelihoodRows, GreedyRows, HFLM):
    """HFLM with shared-prefix KV reuse; a drop-in for lm-eval's `hf` model (same model_args, same scores).

    Extra model_args: `prefix_min_tokens` (default 8): shortest common token prefix worth sharing;
    `gen_batch_size` (default max(batch_size, 32)): rows generate_until decodes at once (each row's KV buffer
    holds its prompt after the shared prefix plus max_gen_toks: lower it if memory is short);
    `draft_tokens` (default 8): while few rows are left decoding, each also feeds up to this many draft tokens
    (prompt lookup) that the step verifies (genft.packed_decode.greedy_decode: same greedy tokens, fewer steps); 0: off;
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
