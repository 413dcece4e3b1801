#!/usr/bin/env python
"""Evaluation speed on the suites' cells: genft's `genft-hf`, lm-eval's `hf`, and the study's own method.

Every backend loads the same checkpoint (SmolLM2-135M by default) once and runs the same genft harness cells
(same items, same demonstrations, same thread count).  Each cell is run `--reps` times (>= 3) with the order
of the backends rotated every time, and the median model time is reported (model time: the backend's
`loglikelihood` / `generate_until` calls, as lm-eval makes them).

Backends:
  genft-hf  genft's backend (shared demonstration prefix kept once, one pass per item over its labels, lm_head
            at scored positions only, greedy decoding with refill); must give `hf`'s results exactly: per item
            the same generated texts, log-likelihoods within --tol with the same greedy flags, same metrics.
  hf        lm-eval's own `hf` model at --batch-size (its defaults otherwise).
  study     the study's method: classification by the label's first token at the first generated position
            (one plain forward per context, batch --batch-size, left-padded, the lm_head at that last position
            only, as transformers' `generate` computes it; --study-logits all: at every position, as the
            tables measured before the swa-262k anchor had it); generation by transformers' greedy `generate`
            (batch --batch-size, max_gen_toks new tokens, no early stop), cut at the stop sequences.  Its
            classification scores are first-token scores, not `hf`'s.

Roofline.  The machine's matmul FLOP/s in the weights' dtype (--dtype: a 2048^3 fp32 sgemm, or the same
matmul in bf16) and memory read bandwidth (a 256 MiB sum) are measured at the same thread count.  For each cell the least work it needs is counted from its requests: the
prefill FLOPs 2 * (non-embedding parameters) * (distinct prompt tokens: the cell's shared demonstration prefix
once plus each item's own tokens) plus the lm_head at one position per item (the embedding lookup is free),
and for generation the greedy tokens each item needs after the first, which the prefill's lm_head gives (its
output re-tokenized, plus one for the stop, at most max_gen_toks), each costing max(2 * (non-embedding +
lm_head parameters) / FLOP/s, weight bytes / (8 * bandwidth)): a decoding step of a batch of 8 reads every
weight it multiplies once (an untied input embedding is not among them).  `% roofline` is that bound's time
over the measured time; `% matmul` (classification) is the prefill FLOPs over the measured time as a share of
the measured FLOP/s.

    python benchmarks/eval_speed.py                              # default cells, 2 threads, 3 runs each
    python benchmarks/eval_speed.py --quick --threads 1          # a busy machine / a smoke run
    python benchmarks/eval_speed.py --backends genft-hf --json out.json   # one backend, machine-readable
    python benchmarks/eval_speed.py --model swa-262k --preset swa   # the sliding-window, 262k-vocab anchor
    python benchmarks/eval_speed.py --dtype bfloat16             # bf16 weights, shares of the bf16 matmul peak

The report ("genft-hf against study and hf") gives each cell's speed-up and checks genft-hf's speed targets: no
cell kind (classification / generation, 0-shot / k-shot) slower with genft-hf than with the study's method,
and k-shot classification at least 3x lm-eval's `hf`.  The default model's run writes the whole --out file
except blocks that other scripts own (`<!-- NAME:start -->` ... `<!-- NAME:end -->`, kept as they are);
another model's run writes only its own block `<!-- eval_speed:MODEL:start -->` ... `end -->` in --out
(replaced where it is, appended if absent).  swa-262k has random weights: its scores mean nothing, and its
greedy generations run to max_gen_toks (no stop), which is what a speed measurement needs.  A --dtype bfloat16
run writes its own block `<!-- eval_speed:MODEL:bfloat16:start -->` (its generation texts may part from `hf`'s at
bf16 near-ties: counted per cell, not failures).  Its `hf` holds
the logits of a whole batch and their log-softmax ([8, ~420, 262144] fp32 each at 4-shot PAWS: ~7 GB).

Data: $GENFT_DATA_DIR or --data-dir; if neither holds data, the study's release (the folder
--study-data names) is imported into a temporary folder, and genft's builtin sets are written next to it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from genft.metrics import clean_generation
from genft.prompts import primary_metric_of

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:  # report_section, next to this file
    sys.path.insert(0, str(REPO / "benchmarks"))
import report_section  # noqa: E402

BACKENDS = ("genft-hf", "hf", "study")
# bf16 log-likelihoods: genft-hf within max(BF16_LL_ABS, BF16_LL_REL x |ll|) of hf's (tests/test_backend.py: a
# log-probability is a difference of bf16 logits, so even one near 0 carries their rounding)
BF16_LL_REL, BF16_LL_ABS = 2**-6, 0.05

# (task, shots, items): the suites' generation cells (XSum, PeerRead, SocialIQA, TweetQA at 0 and k shots)
# and classification cells.
CELLS = [
    ("genft_summary_xsum", 0, 20), ("genft_summary_xsum", 1, 20),
    ("genft_summary_peerread", 0, 10), ("genft_summary_peerread", 1, 10),
    ("genft_question_socialiqa", 0, 20), ("genft_question_socialiqa", 2, 20),
    ("genft_question_tweetqa", 0, 20), ("genft_question_tweetqa", 2, 20),
    ("genft_sentiment_amazon", 0, 100), ("genft_sentiment_amazon", 4, 60), ("genft_nli_mnli_m", 5, 40),
]
QUICK = [
    ("genft_summary_xsum", 0, 6), ("genft_summary_xsum", 1, 6),
    ("genft_question_socialiqa", 0, 8), ("genft_question_socialiqa", 2, 8),
    ("genft_nli_mnli_m", 5, 12),
]
# The anchor cells on a sliding-window, large-vocabulary model (--model swa-262k): 0-shot NLI, 4-shot paraphrase
# classification, and a generation cell.
SWA = [("genft_nli_mnli_m", 0, 40), ("genft_paraphrase_paws", 4, 40), ("genft_question_socialiqa", 0, 16)]
PRESETS = {"default": CELLS, "quick": QUICK, "swa": SWA}
DEFAULT_MODEL = "smollm2-135m"


def _parse_cell(text: str):
    task, shots, items = text.split(":")
    return task, int(shots), int(items)


# --------------------------------------------------------------------------- the study's method


def study_model(pretrained: str, batch_size: int, logits: str = "last", **kwargs):
    """An lm-eval model doing what the study's code did (see the module docstring); logits "last": the
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


# --------------------------------------------------------------------------- machine and work


def machine_peaks(threads: int, rounds: int = 3, gap_s: float = 1.0, dtype: str = "float32") -> dict:
    """Matmul FLOP/s in `dtype` (2048^3: float32 sgemm, or bfloat16 as torch runs a bf16 model's linear layers)
    and memory read bandwidth (256 MiB fp32 sum) at `threads`: the best of 5 calls in each of `rounds` rounds
    `gap_s` apart (one round can fall in a slow spell: a reading of 218 GFLOP/s where the same machine gave 371
    minutes later)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048, dtype=getattr(torch, dtype)), torch.randn(2048, 2048, dtype=getattr(torch, dtype))
    x = torch.randn(64 * 1024 * 1024)
    mm, rd = [], []
    for i in range(rounds):
        if i:
            time.sleep(gap_s)
        mm.append(best_seconds(lambda: a @ b))
        rd.append(best_seconds(x.sum))
    return {"flops": 2 * 2048**3 / min(mm), "bandwidth": x.numel() * 4 / min(rd), "dtype": dtype}


def best_seconds(f, reps: int = 5) -> float:
    """The fastest of `reps` timed calls of f, after one untimed call."""
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def decode_matmuls(model, threads: int, rows: int = 20) -> dict:
    """A decoding step's matmuls at `rows` live rows, alone: every linear layer of the model (LoRA adapters
    included, the lm_head last) applied once to `rows` random rows, in the model's order, so each weight comes
    from memory as in a real step (best of 3).  Returns seconds per step and the FLOP/s reached."""
    import torch

    torch.set_num_threads(threads)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.device.type != "meta"]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    flops = sum(2 * rows * w.numel() for w in weights)

    def step():
        with torch.no_grad():
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)

    seconds = best_seconds(step, reps=3)
    return {"rows": rows, "seconds": seconds, "flops": flops / seconds}


def model_sizes(model) -> dict:
    """Parameter counts of a (possibly peft-wrapped) causal LM, each tied tensor once: `body` the non-embedding
    parameters without LoRA (prefill FLOPs per token / 2), `head` the lm_head (FLOPs per scored position / 2;
    tied or not), `embed`, `lora`, `trainable`, `total`, and `bytes` a decoding step reads: every weight it
    multiplies, the lm_head's included; an untied input embedding is not read (a lookup), a tied one is the
    lm_head."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    tied = head is embed or (head.device.type != "meta" and head.data_ptr() == embed.data_ptr())
    total = lora = trainable = nbytes = 0
    for name, p in model.named_parameters():  # remove_duplicate: a tied tensor once
        total += p.numel()
        nbytes += p.numel() * p.element_size()
        lora += p.numel() if "lora_" in name else 0
        trainable += p.numel() if p.requires_grad else 0
    untied = 0 if tied else head.numel()
    return {"total": total, "body": total - lora - embed.numel() - untied, "embed": embed.numel(),
            "head": head.numel(), "tied": tied, "lora": lora, "trainable": trainable,
            "bytes": nbytes - embed.numel() * embed.element_size() + (head.numel() - untied) * head.element_size()}


def cell_work(tok, requests, outputs, max_gen_toks: int) -> dict:
    """The least work a cell needs: distinct prompt tokens (shared prefix once), items, greedy tokens."""
    contexts = list(dict.fromkeys(r.args[0] for r in requests))
    encs = [tok(c)["input_ids"] for c in contexts]
    lcp = min(len(e) for e in encs)
    for e in encs[1:]:
        lcp = min(lcp, next((i for i, (x, y) in enumerate(zip(encs[0], e)) if x != y), min(len(encs[0]), len(e))))
    prompt_tokens = lcp + sum(len(e) - lcp for e in encs)
    # Each item's first generated token comes from the prefill's lm_head (counted with the contexts).
    gen = sum(min(max_gen_toks, len(tok(o, add_special_tokens=False)["input_ids"]) + 1) - 1 for o in outputs)
    return {"prompt_tokens": prompt_tokens, "contexts": len(contexts), "gen_tokens": gen}


def bound_seconds(work: dict, sizes: dict, peaks: dict) -> tuple[float, float]:
    """(prefill seconds, decoding seconds) at the machine's measured peaks: the lm_head once per context (its
    scored position), every other position through the non-embedding layers only; then the decoding steps."""
    prefill = (2 * sizes["body"] * work["prompt_tokens"] + 2 * sizes["head"] * work["contexts"]) / peaks["flops"]
    per_token = max(2 * (sizes["body"] + sizes["head"]) / peaks["flops"], sizes["bytes"] / (8 * peaks["bandwidth"]))
    return prefill, work["gen_tokens"] * per_token


# --------------------------------------------------------------------------- comparing outputs


def _timed(lm, bucket: dict):
    """Time the model calls lm-eval makes (instance attributes shadow the class methods); keep the requests.
    With bucket["profile"] True the next call also runs under torch's profiler: its per-operator table is left
    in bucket["ops"] (and "profile" is reset)."""
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


def _responses(res: dict, task: str) -> list:
    return [s["resps"] for s in sorted(res["samples"][task], key=lambda s: s["doc_id"])]


def _same(a: list, b: list, tol: float, rel: float = 0.0) -> tuple[bool, float]:
    """Per-item equality of two runs' responses: texts as the tasks score them (stripped, then cut at the
    first blank line: genft-hf stops a row there), log-likelihoods within max(tol, rel * |ll|) + greedy flags."""
    parted, max_d = _parted(a, b, tol, rel)
    return parted == 0, max_d


def _parted(a: list, b: list, tol: float, rel: float = 0.0) -> tuple[int, float]:
    """(items whose responses differ as `_same` judges them, the largest log-likelihood difference)."""
    max_d, parted = 0.0, 0
    if len(a) != len(b):
        return max(len(a), len(b)), float("nan")
    for ra, rb in zip(a, b):
        differs = False
        for x, y in zip(ra, rb):
            if isinstance(x[0], str):
                differs |= clean_generation(x[0]) != clean_generation(y[0])
            else:
                d = abs(float(x[0][0]) - float(y[0][0]))
                max_d = max(max_d, d)
                differs |= d > max(tol, rel * abs(float(x[0][0]))) or bool(x[0][1]) != bool(y[0][1])
        parted += differs
    return parted, max_d


def _metric(task: str, res: dict) -> str:
    """`task`'s primary metric (genft's one rule: prompts.primary_metric_of) and its value in lm-eval's results."""
    metric = primary_metric_of(task)
    value = res.get(f"{metric},none")
    return f"{metric} {value:.3f}" if isinstance(value, float) else ""


# --------------------------------------------------------------------------- the report


CLS_MATMUL_TARGET = 0.60  # target: classification at or above 60% of the machine's matmul FLOP/s


def targets_section(medians: list, matmul_shares: dict | None = None) -> list[str]:
    """Markdown lines: genft-hf's speed-up over `study` and `hf` per cell (their median model time over its
    own) and genft-hf's speed targets.  medians: [(task, shots, items, generation, {backend: median seconds})];
    matmul_shares: {(task, shots): genft-hf's prefill FLOPs over its median time as a share of the measured
    matmul FLOP/s} of the classification cells (the third target, checked when given)."""
    if not medians or "genft-hf" not in medians[0][4] or not {"study", "hf"} & set(medians[0][4]):
        return []
    rows, slower, kshot = [], [], []
    for task, shots, n, generation, med in medians:
        kind = f"{'generation' if generation else 'classification'} {'0-shot' if shots == 0 else 'k-shot'}"
        vs = {b: med[b] / med["genft-hf"] for b in ("study", "hf") if b in med}
        rows.append(f"| {task} | {shots} | {n} | {kind} | " + " | ".join(
            f"{vs[b]:.2f}x" if b in vs else "not run" for b in ("study", "hf")) + " |")
        if "study" in vs and vs["study"] < 1:
            slower.append(f"{kind} ({task} {shots}-shot: {vs['study']:.2f}x)")
        if kind == "classification k-shot" and "hf" in vs:
            kshot.append((f"{task} {shots}-shot: {vs['hf']:.2f}x", vs["hf"] >= 3))
    if "study" not in medians[0][4]:
        first = "not measured (the study backend did not run)"
    elif slower:
        first = "**does not hold**: " + "; ".join(slower)
    else:
        first = "**holds** (every cell: " + ", ".join(
            f"{m[0]} {m[1]}-shot {m[4]['study'] / m[4]['genft-hf']:.2f}x" for m in medians) + ")"
    if not kshot:
        second = "not measured (no k-shot classification cell with `hf`)"
    else:
        second = ("**holds**" if all(ok for _, ok in kshot) else "**does not hold**") + " (" + ", ".join(
            k for k, _ in kshot) + ")"
    third = []
    if matmul_shares:
        shares = ", ".join(f"{t} {k}-shot {100 * v:.0f}%" for (t, k), v in matmul_shares.items())
        held = all(v >= CLS_MATMUL_TARGET for v in matmul_shares.values())
        third = [f"- classification at or above {100 * CLS_MATMUL_TARGET:.0f}% of the matmul FLOP/s (genft-hf): "
                 f"{'**holds**' if held else '**does not hold**'} ({shares})"]
    return [
        "**genft-hf against study and hf**: the other backend's median model time over genft-hf's (above 1x: "
        "genft-hf is faster).",
        "",
        "| task | shots | items | cell kind | genft-hf speed-up over study | over hf |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "genft-hf's speed targets on these cells (medians of the runs above):",
        f"- no cell kind slower with genft-hf than with the study's method: {first}",
        f"- k-shot classification at least 3x lm-eval's `hf`: {second}",
        *third,
        "",
    ]


def generation_profile(cells: list, peaks: dict, sizes: dict, step: dict) -> list[str]:
    """Markdown lines: where genft-hf's generation time went, from its work counters (engine.greedy_decode's)
    in the last run of each generation cell.  cells: [(task, shots, items, counters, bound_prefill_s,
    bound_decode_s)]; step: decode_matmuls()."""
    if not cells:
        return []
    rows = []
    for task, shots, n, st, b_pre, b_dec in cells:
        pre_s, dec_s = st.get("generate_prefill_s", 0.0), st.get("generate_decode_s", 0.0)
        steps = st.get("decode_steps", 0)
        pre_tok = st.get("prefill_tokens", 0) + st.get("prefix_tokens", 0)
        decoded = st.get("generated_tokens", 0) - n  # each row's first token comes with its prefill
        rate = 2 * sizes["body"] * pre_tok / pre_s / peaks["flops"] if pre_s else 0.0
        drafts = f"{st.get('draft_accepted', 0)} / {st.get('draft_tokens', 0)}" if st.get("draft_tokens") else "none"
        rows.append(f"| {task} | {shots} | {n} | {pre_s:.2f} ({pre_tok} tokens, {100 * rate:.0f}% of peak) | {b_pre:.2f} "
                    f"| {dec_s:.2f} | {b_dec:.2f} | {steps} | {decoded / max(steps, 1):.1f} "
                    f"| {1e3 * dec_s / max(steps, 1):.0f} | {drafts} |")
    r = step["rows"]
    bound_ms = 1e3 * max(2 * (sizes["body"] + sizes["head"]) * r / peaks["flops"], sizes["bytes"] * r / (8 * peaks["bandwidth"]))
    return [
        "**Where genft-hf's generation time goes** (its own counters, last run of each cell; 'bound': the roofline's",
        "time for that phase).  Prefill runs every prompt token once (shared demonstrations once per cell) at the",
        "share of the matmul peak shown.  Decoding takes one step per token of a batch's longest row, fewer where",
        "draft tokens (prompt lookup, verified by the step) were kept; a step costs at least its matmuls at a few",
        f"rows: the model's linear layers and lm_head at {r} rows, weights read from memory, take",
        f"{1e3 * step['seconds']:.0f} ms alone ({step['flops'] / 1e9:.0f} GFLOP/s, {100 * step['flops'] / peaks['flops']:.0f}% of the "
        f"matmul peak), where the roofline allows {bound_ms:.0f} ms for {r} tokens.",
        "",
        "| task | shots | items | prefill s | bound | decode s | bound | decode steps | tokens per step | ms per step | draft tokens kept / fed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


LINEAR_OPS = ("aten::mm", "aten::addmm")  # what nn.Linear runs on the CPU (a [rows, in] x [in, out] GEMM)


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


def classification_profile(cells: list, peaks: dict, sizes: dict) -> list[str]:
    """Markdown lines: where genft-hf's classification time goes, from one profiled run per cell (not among the
    timed runs).  cells: [(task, shots, items, call seconds, op_seconds(), counters, bound_prefill_s)]; the
    counters are genft-hf's (`forward_positions`: every position its forwards ran, the shared prefix's
    included; `head_rows`: lm_head rows)."""
    if not cells:
        return []
    rows = []
    for task, shots, n, call_s, ops, st, bound in cells:
        if not ops["linear"]:
            rows.append(f"| {task} | {shots} | {n} | {call_s:.2f} | no linear operators profiled | | | | {bound:.2f} | | |")
            continue
        flops = 2 * sizes["body"] * st.get("forward_positions", 0) + 2 * sizes["head"] * st.get("head_rows", 0)
        rate = flops / ops["linear"] / peaks["flops"]
        outside = max(call_s - ops["total"], 0.0)
        rows.append(f"| {task} | {shots} | {n} | {call_s:.2f} | {ops['linear']:.2f} ({100 * rate:.0f}% of peak) "
                    f"| {ops['attention']:.2f} | {ops['other']:.2f} | {outside:.2f} | {bound:.2f} "
                    f"| {100 * bound / call_s:.0f}% | {100 * bound / ops['linear']:.0f}% |")
    return [
        "**Where genft-hf's classification time goes** (one extra run of each cell under torch's profiler, each",
        "operator's own time; the profiler adds a little to every operator).  'linears': the GEMMs of the linear",
        "layers and the lm_head, at the FLOP/s their work implies (every position run, the shared prefix once, and",
        "each lm_head row) as a share of the matmul peak; 'attention': the scaled-dot-product kernels; 'other",
        "tensor ops': norms, rotary embeddings, activations, additions, copies and masks; 'outside torch':",
        "tokenization, planning and Python.  'bound': the cell's least prefill work at the matmul peak (the",
        "'% matmul FLOP/s' column above counts that work); 'if only the linears took time': the bound over the",
        "linears' time, the most that share could reach with attention, the other operators and the rest free.",
        "",
        "| task | shots | items | model s (profiled run) | linears s | attention s | other tensor ops s | outside torch s "
        "| bound s | % matmul FLOP/s | if only the linears took time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def write_report(path: Path, text: str, owner: str | None) -> None:
    """Write the report into `path`, keeping what other scripts own (benchmarks/report_section.py).

    owner None: the file becomes `text`, followed by every marked block (`<!-- NAME:start -->` ...
    `<!-- NAME:end -->`) the old file had, unchanged and in order.  owner NAME: only the block NAME is
    written, in place, or appended at the end if the file has none; everything else stays byte for byte.
    A start marker without its end marker is an error (the file is left as it is)."""
    if owner is not None:
        report_section.write_section(path, owner, text)
        return
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    report_section.check(old)
    report_section.write_text(path, report_section.carry_over(old, text))


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a genft model name or a model folder")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (use 1 on a busy 2-core machine)")
    ap.add_argument("--batch-size", type=int, default=8, help="every backend's batch size (the suites' 8)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ", ".join(BACKENDS))
    ap.add_argument("--reps", type=int, default=3, help="runs per cell and backend (median reported; >= 3)")
    ap.add_argument("--cell", action="append", default=None, metavar="TASK:SHOTS:ITEMS",
                    help="a cell (repeatable); default: %s" % ", ".join(f"{t}:{s}:{n}" for t, s, n in CELLS))
    ap.add_argument("--quick", action="store_true", help="five small cells (= --preset quick)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="a cell set: default, quick, or swa (%s)" % ", ".join(f"{t}:{s}:{n}" for t, s, n in SWA))
    ap.add_argument("--study-logits", choices=("last", "all"), default="last",
                    help="the study backend's lm_head: at the last position only (default) or at every position")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--study-data", default=str(REPO.parent / "shared" / "paper-data"))
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the weights' dtype for every backend; the shares use the matmul peak measured in it "
                    "(bfloat16 needs a CPU with native bf16)")
    ap.add_argument("--tol", type=float, default=1e-4, help="log-likelihoods within this of hf's (float32)")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"),
                    help="the Markdown report ('' = none); a model other than %s writes only its own block" % DEFAULT_MODEL)
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    args = ap.parse_args(argv)
    if args.dtype == "bfloat16":
        from genft.precision import PrecisionError, check_cpu_bf16

        try:
            check_cpu_bf16("--dtype bfloat16")
        except PrecisionError as e:
            ap.error(str(e))
    bf16 = args.dtype == "bfloat16"
    # bf16: hf's log-probabilities are bf16-rounded (tests/test_backend.py: within 2**-6 relative of genft-hf's),
    # and a greedy text may part from hf's at a bf16 near-tie: such items are counted, not failures
    rel = BF16_LL_REL if bf16 else 0.0
    if bf16:
        args.tol = max(args.tol, BF16_LL_ABS)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(backends) - set(BACKENDS) or not backends:
        ap.error(f"--backends: choose from {', '.join(BACKENDS)}")
    if sum(bool(x) for x in (args.cell, args.quick, args.preset)) > 1:
        ap.error("choose one of --cell, --quick, --preset")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import lm_eval
    import transformers
    from tabulate import tabulate

    import genft.backend  # noqa: F401  (registers genft-hf)
    from genft import harness
    from genft.data import data_dir
    from genft.models import resolve

    root = data_dir(args.data_dir)
    if not (root / "sentiment").is_dir():
        from genft.builtin import generate
        from genft.data import import_study

        root = Path(tempfile.mkdtemp(prefix="genft-bench-data-"))
        print(f"importing the study's data from {args.study_data} into {root}", flush=True)
        import_study(Path(args.study_data), root, log=lambda *_: None)
        generate(root, log=lambda *_: None)
    pretrained = resolve(args.model)
    cells = [_parse_cell(c) for c in args.cell] if args.cell else PRESETS[args.preset or ("quick" if args.quick else "default")]
    peaks = machine_peaks(args.threads, dtype=args.dtype)
    fp32_peak = peaks if not bf16 else machine_peaks(args.threads)
    label = "fp32" if not bf16 else "bf16"
    print(f"machine: {peaks['flops'] / 1e9:.0f} GFLOP/s {label} matmul"
          + (f" ({fp32_peak['flops'] / 1e9:.0f} fp32)" if bf16 else "") + f", {peaks['bandwidth'] / 1e9:.1f} GB/s read",
          flush=True)
    load_before = os.getloadavg()
    tm = harness.task_manager(pretrained, root)

    timers = {b: {"seconds": 0.0} for b in backends}
    lms = {}
    for b in backends:
        lm = (study_model(pretrained, args.batch_size, logits=args.study_logits, dtype=args.dtype) if b == "study"
              else harness.load_model(pretrained, backend=b, batch_size=args.batch_size, dtype=args.dtype))
        if b == "genft-hf":
            lm._fast_ok()  # its one-time check of genft's attention on this model: paid once per load, as loading is
        lms[b] = _timed(lm, timers[b])
    any_lm = next(iter(lms.values()))
    sizes = model_sizes(any_lm.model)
    step = decode_matmuls(any_lm.model, args.threads)
    gen_profile, cls_profile, counters, matmul_shares = [], [], {}, {}

    raw, rows, failures, medians = [], [], [], []
    started = time.time()
    for task, shots, items in cells:
        secs = {b: [] for b in backends}
        resp, res, reqs = {}, {}, {}
        for rep in range(args.reps):
            order = backends[rep % len(backends):] + backends[: rep % len(backends)]
            for b in order:
                timers[b]["seconds"] = 0.0
                if b == "genft-hf":
                    lms[b].stats.clear()
                r = harness.evaluate(lms[b], [task], num_fewshot=shots, limit=items, tm=tm, log_samples=True)
                secs[b].append(timers[b]["seconds"])
                if b == "genft-hf":
                    counters = dict(lms[b].stats)
                got = _responses(r, task)
                if b in resp and not _same(resp[b], got, args.tol, rel)[0]:
                    failures.append(f"{task} {shots}-shot: {b} differs between its own runs")
                resp[b], res[b], reqs[b] = got, r["results"][task], timers[b]["requests"]
                print(f"{task} {shots}-shot x{items} run {rep + 1} {b}: {secs[b][-1]:.1f}s", flush=True)
        n = len(next(iter(resp.values())))
        generation = isinstance(next(iter(resp.values()))[0][0][0], str)
        first = next(iter(reqs.values()))
        outputs = [x[0][0] for x in next(iter(resp.values()))] if generation else []
        max_gen = first[0].args[1].get("max_gen_toks", 256) if generation else 0
        work = cell_work(any_lm.tokenizer, first, outputs, max_gen)
        t_pre, t_dec = bound_seconds(work, sizes, peaks)
        medians.append((task, shots, n, generation, {b: statistics.median(secs[b]) for b in backends}))
        if generation and "genft-hf" in backends:
            gen_profile.append((task, shots, n, counters, t_pre, t_dec))
        elif "genft-hf" in backends:
            matmul_shares[(task, shots)] = t_pre / medians[-1][4]["genft-hf"]
            timers["genft-hf"].update(seconds=0.0, profile=True)  # one more run, profiled, outside the medians
            lms["genft-hf"].stats.clear()
            harness.evaluate(lms["genft-hf"], [task], num_fewshot=shots, limit=items, tm=tm)
            cls_profile.append((task, shots, n, timers["genft-hf"]["seconds"], op_seconds(timers["genft-hf"]["ops"]),
                                dict(lms["genft-hf"].stats), t_pre))
        for b in backends:
            med = medians[-1][4][b]
            same = ""
            if b == "genft-hf" and "hf" in resp:
                parted, max_d = _parted(resp["hf"], resp[b], args.tol, rel)
                near_tie = bf16 and generation  # bf16 greedy texts may part at near-ties: counted, shown
                same = ("yes" if not parted else f"{parted} of {n} differ" if near_tie else "NO") + (
                    "" if generation else f" (max d {max_d:.1e})")
                if parted and not near_tie:
                    failures.append(f"{task} {shots}-shot: genft-hf differs from hf")
            share = (t_pre + t_dec) / med
            flops_share = "" if generation else f"{100 * t_pre / med:.0f}%"
            rows.append([task, shots, n, b, f"{n / med:.2f}", " / ".join(f"{s:.1f}" for s in secs[b]),
                         f"{100 * share:.0f}%", flops_share, same, _metric(task, res[b])])
            raw.append({"task": task, "shots": shots, "items": n, "backend": b, "seconds": secs[b],
                        "items_per_s": n / med, "roofline_share": share, "work": work,
                        "bound_prefill_s": t_pre, "bound_decode_s": t_dec, "identical_to_hf": same})
    total = time.time() - started
    load_after = os.getloadavg()
    peaks_after = machine_peaks(args.threads, dtype=args.dtype)  # again: how much the machine's speed moved

    headers = ["task", "shots", "items", "backend", "items/s (median)", "model s per run", "% roofline",
               "% matmul FLOP/s", "same as hf", "score"]
    info = [
        ["date", dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")],
        ["model", f"{args.model} ({pretrained}); {sizes['body'] / 1e6:.1f}M non-embedding + {sizes['head'] / 1e6:.1f}M lm_head parameters"
                  + (" (tied)" if sizes["tied"] else "")],
        ["machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"],
        ["measured peaks", f"{peaks['flops'] / 1e9:.0f} GFLOP/s {label} matmul, {peaks['bandwidth'] / 1e9:.1f} GB/s memory read ({args.threads} threads; "
                           f"the shares use these); measured again after the cells: {peaks_after['flops'] / 1e9:.0f} GFLOP/s, {peaks_after['bandwidth'] / 1e9:.1f} GB/s"
                           + (f"; fp32 matmul {fp32_peak['flops'] / 1e9:.0f} GFLOP/s" if bf16 else "")],
        ["weights dtype", args.dtype + (" (every backend; log-likelihoods compared within 2**-6 relative)" if bf16 else "")],
        ["torch threads / batch size / runs", f"{args.threads} / {args.batch_size} / {args.reps} (backend order rotated per run)"],
        ["study's lm_head", "last position only" if args.study_logits == "last" else "every position"],
        ["load average before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f} (1 min; other users share the CPUs)"],
        ["versions", f"torch {torch.__version__}, transformers {transformers.__version__}, lm-eval {lm_eval.__version__}"],
        ["benchmark wall time", f"{total / 60:.1f} min"],
    ]
    own = None if args.model == DEFAULT_MODEL and not bf16 else \
        f"eval_speed:{Path(args.model).name}" + (":bfloat16" if bf16 else "")
    text = "\n".join([
        "# Evaluation speed: `genft-hf`, `hf` and the study's method" if own is None else
        f"## Evaluation speed on {args.model}{' in bf16' if bf16 else ''}: `genft-hf`, `hf` and the study's method",
        "",
        "Generated by `python benchmarks/eval_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`.",
        "Same cells, same items, same threads for every backend; items/s is the median of the runs' model time",
        "(lm-eval's `loglikelihood` / `generate_until` calls). '% roofline': the cell's least work at the machine's",
        "measured matmul FLOP/s (prefill) and memory bandwidth (decoding, a batch of 8 per weight read) over the",
        "measured time (see the script's docstring). 'same as hf': identical greedy texts, or log-likelihoods",
        f"within {args.tol:g} with the same greedy flags, on every item."
        + (" In bf16: within max(tol, 2**-6 x |ll|), tol at least 0.05; a greedy text that parts from hf's at a bf16 near-tie is "
           "counted ('k of n differ'), not a failure. '%' shares are of the bf16 matmul peak." if bf16 else ""),
        "",
        tabulate(rows, headers=headers, tablefmt="github"),
        "",
    ] + targets_section(medians, matmul_shares) + generation_profile(gen_profile, peaks, sizes, step) \
        + classification_profile(cls_profile, peaks, sizes) + [
        tabulate(info, headers=["", ""], tablefmt="github"),
        "",
    ] + ([f"**Differences:** {'; '.join(failures)}", ""] if failures else []))
    if args.out:
        write_report(Path(args.out), text, own)
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, "peaks_after": peaks_after, "sizes": sizes, "threads": args.threads, "decode_matmuls": step,
                                               "generation_counters": [list(c) for c in gen_profile],
                                               "classification_profile": [[t, k, n, c, o, st, b] for t, k, n, c, o, st, b in cls_profile],
                                               "cells": raw, "failures": failures}, indent=1))
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
