"""The study's prompt quirks (a suite's `data.protocol: study`) applied to a loaded lm-eval model's requests,
so that every backend evaluates the prompts the study's code built (genft.data.protocol documents them)."""
from __future__ import annotations

from lm_eval.api.model import LM

from .data import StudyQuirks, quirks_for, study_prompt_text


class StudyPromptLM(LM):
    """A loaded lm-eval model whose requests get the study's prompt quirks (data.protocol: study; see
    genft.data.protocol): at 0 shots the literal BOS text and a space before the context; for generation the
    BOS the study's vLLM added; classification with demonstrations unchanged (no BOS, as lm-eval's default for
    causal models).  One wrapper per shot count: the quirks depend on it."""

    def __init__(self, lm: LM, shots: int, bos_text: str, quirks: StudyQuirks):
        super().__init__()
        self.lm, self.shots, self.bos_text, self.quirks = lm, shots, bos_text, quirks

    def __getattr__(self, name):  # everything else (tokenizer, batch size, ...) is the wrapped model's
        return getattr(self.lm, name)

    def loglikelihood_rolling(self, requests, *args, **kwargs):
        return self.lm.loglikelihood_rolling(requests, *args, **kwargs)

    def _context(self, context: str, kind: str) -> str:
        """The BOS is written into the text (and the tokenizer told to add none), so the study's token sequence
        does not depend on whether a tokenizer adds BOS by itself."""
        text, add_special = study_prompt_text(context, self.shots, kind, self.bos_text, self.quirks)
        return (self.bos_text + text) if add_special else text

    def _call(self, method: str, kind: str, requests, args, kwargs):
        for r in requests:
            r.arguments = (self._context(r.arguments[0], kind),) + tuple(r.arguments[1:])
        had = getattr(self.lm, "add_bos_token", None)
        self.lm.add_bos_token = False  # lm-eval's tokenizing adds no special tokens: the text holds the BOS
        try:
            return getattr(self.lm, method)(requests, *args, **kwargs)
        finally:
            self.lm.add_bos_token = had

    def loglikelihood(self, requests, *args, **kwargs):
        return self._call("loglikelihood", "classification", requests, args, kwargs)

    def generate_until(self, requests, *args, **kwargs):
        return self._call("generate_until", "generation", requests, args, kwargs)


def with_protocol(lm, protocol: str, shots: int):
    """The model as the protocol evaluates it: itself (clean), or with the study's prompt quirks."""
    quirks = quirks_for(protocol)
    if not (quirks.zero_shot_bos_text or quirks.no_bos_with_demos):
        return lm
    bos = getattr(getattr(lm, "tokenizer", None), "bos_token", None)
    if not bos:
        raise ValueError("protocol study: the model's tokenizer has no BOS token to reproduce the study's prompts")
    return StudyPromptLM(lm, shots, bos, quirks)
