"""`genft-hf`'s generate_until (greedy): rows decode together in preallocated KV buffers at their own lengths,
a finished row's slot taken by a waiting one, draft tokens verified while few rows are live
(`packed_decode.greedy_decode`); texts cut by lm-eval's own `postprocess_generated_text`, so stop sequences are
handled exactly as `hf` handles them.  A mixin of `genft.backend.GenftHFLM`; sampling, beam search and
non-neutral generation configs go to `HFLM` through `super()`.
"""
from __future__ import annotations

import json
from collections import defaultdict

import torch
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from .packed_decode import greedy_decode
from .packed_rows import rows_attention
from .prefix_groups import plan_prefix_groups


class GreedyRows:
    """HFLM's generate_until for greedy decoding on packed rows (mixed into `GenftHFLM` before `HFLM`)."""

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
