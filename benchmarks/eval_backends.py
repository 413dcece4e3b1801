"""The models benchmarks/eval_speed.py times, and the timer around their calls.

`study_model`: the study's method as an lm-eval model (the `study` backend; eval_speed.py's docstring says
what it does).  `timed`: the timer wrapped around any backend's `loglikelihood` / `generate_until` calls (the
model time the benchmark reports), with torch's profiler on one call when asked; `op_seconds` splits such a
profiled call's operator time into the linear layers, attention and the rest.
"""
from __future__ import annotations

import time

LINEAR_OPS = ("aten::mm", "aten::addmm")  # what nn.Linear runs on the CPU (a [rows, in] x [in, out] GEMM)


def study_model(pretrained: str, batch_size: int, logits: str = "last", **kwargs):
    """An lm-eval model doing what the study's code did (see eval_speed.py's docstring); logits "last": the
    lm_head at the last position only, "all": at every position."""
    import torch
    import torch.nn.functional as F
    from lm_eval.models.huggingface import HFLM

    class StudyLM(HFLM):
        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            generation_kwargs.pop("temperature", None)
            generation_kwargs["do_sample"] = False
            return self.model.generate(input_ids=context, max_length=max_length,
                                       pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **generation_kwargs)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            pairs = [self._encode_pair(*r.args) for r in requests]
            contexts = sorted({tuple(c) for c, _ in pairs}, key=lambda c: -len(c))
            first: dict[tuple, torch.Tensor] = {}
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            for start in range(0, len(contexts), self.batch_size):
                chunk = contexts[start : start + self.batch_size]
                width = max(len(c) for c in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, c in enumerate(chunk):
                    ids[i, width - len(c) :] = torch.tensor(c)
                    mask[i, width - len(c) :] = 1
                keep = {"logits_to_keep": 1} if logits == "last" else {}
                with torch.no_grad():
                    scores = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                        **keep).logits
                for i, c in enumerate(chunk):
                    first[c] = F.log_softmax(scores[i, -1].float(), dim=-1)
            out = []
            for c, cont in pairs:
                lp = first[tuple(c)]
                out.append((float(lp[cont[0]]), bool(int(lp.argmax()) == cont[0])))
            return out

    return StudyLM(pretrained=pretrained, batch_size=batch_size, device="cpu", **kwargs)


def timed(lm, bucket: dict):
    """Time the model calls lm-eval makes (instance attributes shadow the class methods); keep the requests.
    bucket["seconds"] adds up the calls' time, bucket["requests"] holds the last call's requests.  With
    bucket["profile"] True the next call also runs under torch's profiler: its per-operator table is left in
    bucket["ops"] (and "profile" is reset)."""
    import torch.profiler

    for name in ("loglikelihood", "generate_until"):
        orig = getattr(lm, name)

        def wrapper(requests, *args, _orig=orig, **kwargs):
            bucket["requests"] = list(requests)
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) \
                if bucket.pop("profile", False) else None
            t0 = time.perf_counter()
            try:
                if prof is None:
                    return _orig(requests, *args, **kwargs)
                with prof:
                    return _orig(requests, *args, **kwargs)
            finally:
                bucket["seconds"] += time.perf_counter() - t0
                if prof is not None:
                    bucket["ops"] = prof.key_averages()

        setattr(lm, name, wrapper)
    return lm


def op_seconds(ops) -> dict:
    """A profiled call's operator time (torch.profiler's key_averages: each operator's own time, on the calling
    thread, whose intra-op threads it waits for), in seconds: `linear` (the GEMMs of the linear layers and the
    lm_head), `attention` (scaled-dot-product kernels), `other` (every other tensor operator: norms, rotary
    embeddings, activations, additions, copies, masks), `total`."""
    linear = attention = total = 0.0
    for ev in ops:
        t = ev.self_cpu_time_total / 1e6
        total += t
        if ev.key in LINEAR_OPS:
            linear += t
        elif "scaled_dot_product" in ev.key:
            attention += t
    return {"linear": linear, "attention": attention, "other": total - linear - attention, "total": total}
