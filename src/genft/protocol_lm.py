"""The study protocol (data.protocol: study) applied to a loaded lm-eval model: every request is scored or
decoded on the token ids the study's model received (genft.study_tokens builds them; genft.data.protocol says
what they are), whatever the backend's or the tokenizer's own tokenizing would give.  genft.harness.evaluate
wraps the model for study-protocol data, so suites and `genft eval` get the same tokens."""
from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.models.huggingface import HFLM

from .data import StudyQuirks, quirks_for
from .study_tokens import bare_ids, context_ids


class StudyPromptLM(LM):
    """A loaded lm-eval model (hf, genft-hf; vllm for classification only) evaluated on the study's token ids.

    Classification: the context's ids (study_tokens.context_ids) and the choice's bare ids go straight to the
    model's `_loglikelihood_tokens`.  Generation: during the call the model's `tok_batch_encode` (where hf and
    genft-hf encode a generation context) returns the study's ids, left-padded.  One wrapper per shot count:
    the 0-shot prefix depends on it."""

    def __init__(self, lm: LM, shots: int, quirks: StudyQuirks):
        super().__init__()
        self.lm, self.shots, self.quirks = lm, shots, quirks

    def __getattr__(self, name):  # everything else (tokenizer, batch size, ...) is the wrapped model's
        return getattr(self.lm, name)

    def loglikelihood_rolling(self, requests, *args, **kwargs):
        return self.lm.loglikelihood_rolling(requests, *args, **kwargs)

    def token_requests(self, requests) -> list[tuple[tuple[str, str], list[int], list[int]]]:
        """(strings, context ids, continuation ids) per loglikelihood request, as `_loglikelihood_tokens` takes them."""
        tok, contexts, out = self.lm.tokenizer, {}, []
        for r in requests:
            context, continuation = r.args
            if context not in contexts:
                contexts[context] = context_ids(tok, context, self.shots, "classification", self.quirks)
            cont = bare_ids(tok, continuation)
            if not cont:
                raise ValueError(f"protocol study: the continuation {continuation!r} has no tokens")
            out.append(((context, continuation), contexts[context], cont))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.lm._loglikelihood_tokens(self.token_requests(requests), disable_tqdm=disable_tqdm)

    def generation_ids(self, contexts) -> dict[str, list[int]]:
        return {c: context_ids(self.lm.tokenizer, c, self.shots, "generation", self.quirks) for c in contexts}

    def generate_until(self, requests, disable_tqdm: bool = False):
        lm = self.lm
        if not isinstance(lm, HFLM):
            raise ValueError(f"protocol study: generation on the study's token ids needs the hf or genft-hf backend "
                             f"({type(lm).__name__} encodes its prompts itself); evaluate study-protocol generation "
                             "tasks with eval.backend genft-hf or hf")
        table = self.generation_ids(r.args[0] for r in requests)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

        def study_batch_encode(strings, padding_side="left", left_truncate_len=None, truncation=False):
            rows = [table[s][-left_truncate_len:] if left_truncate_len else table[s] for s in strings]
            width = max(len(r) for r in rows)
            ids = [[pad] * (width - len(r)) + r if padding_side == "left" else r + [pad] * (width - len(r))
                   for r in rows]
            mask = [[0] * (width - len(r)) + [1] * len(r) if padding_side == "left" else
                    [1] * len(r) + [0] * (width - len(r)) for r in rows]
            return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

        had = vars(lm).get("tok_batch_encode")
        lm.tok_batch_encode = study_batch_encode  # this call's contexts only; restored below
        try:
            return lm.generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            if had is None:
                del lm.tok_batch_encode
            else:
                lm.tok_batch_encode = had


def with_protocol(lm, protocol: str, shots: int):
    """The model as the protocol evaluates it: itself (clean), or on the study's token ids (study)."""
    if isinstance(lm, StudyPromptLM):
        raise ValueError("the model is already wrapped for the study protocol")
    quirks = quirks_for(protocol)
    return lm if quirks is None else StudyPromptLM(lm, shots, quirks)
