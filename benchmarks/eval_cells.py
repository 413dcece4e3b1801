"""Measuring benchmarks/eval_speed.py's cells: each cell run on every backend, its outputs compared, its least
work counted.

`measure_cell` runs one cell --reps times on every backend (their order rotated each run), checks the outputs
(each backend against its own earlier runs, genft-hf against hf), counts the cell's least work and its time at
the roofline (`cell_work`, `bound_seconds`; eval_speed.py's docstring says how), gives genft-hf one more run
of each classification cell under torch's profiler, and adds what it found to a `Measured`.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from eval_backends import op_seconds
from run_conditions import rotated

from genft.metrics import clean_generation
from genft.prompts import primary_metric_of

# bf16 log-likelihoods: genft-hf within max(BF16_LL_ABS, BF16_LL_REL x |ll|) of hf's.  A log-probability is a
# difference of bf16-rounded logits, and this model's top logits lie in [16, 32), where bf16 steps by 0.125: two
# such steps, the most `hf` moves between its own batch sizes 1 and 8 (benchmarks/bf16_spread.py measures it).
BF16_LL_REL, BF16_LL_ABS = 2**-6, 0.25


@dataclass
class Bench:
    """What every cell is measured with: the loaded backends and what the figures are judged against."""

    backends: list[str]  # the backends run, in the first run's order
    lms: dict  # backend -> its lm-eval model, its calls timed (eval_backends.timed)
    timers: dict  # backend -> its timer's bucket: "seconds" of model time, "requests" of the last call
    tm: object  # lm-eval's task manager for genft's tasks (genft.harness.task_manager)
    tokenizer: object  # the model's tokenizer, to count a cell's tokens
    sizes: dict  # the model's parameter counts (roofline.model_sizes)
    peaks: dict  # the machine's peaks in the weights' dtype (roofline.machine_peaks)
    reps: int  # runs per cell and backend
    tol: float  # log-likelihoods the same as hf's within max(tol, rel x |ll|)
    rel: float
    bf16: bool  # bf16 weights: a generated text that parts from hf's (a bf16 near-tie) is counted, not a failure


@dataclass
class Measured:
    """What the cells gave, in the order they ran."""

    rows: list = field(default_factory=list)  # the report's table: one row per cell and backend
    raw: list = field(default_factory=list)  # the JSON's "cells": one dict per cell and backend
    failures: list = field(default_factory=list)  # differences: a backend's runs among themselves, genft-hf vs hf
    medians: list = field(default_factory=list)  # (task, shots, items, generation, {backend: median model s})
    gen_profile: list = field(default_factory=list)  # genft-hf's counters per generation cell (eval_report)
    cls_profile: list = field(default_factory=list)  # genft-hf's profiled run per classification cell (eval_report)
    matmul_shares: dict = field(default_factory=dict)  # (task, shots) -> genft-hf's share of the matmul peak


def measure_cell(bench: Bench, cell: tuple[str, int, int], out: Measured) -> None:
    """Run the cell (task, shots, items) --reps times on every backend and add its rows and profiles to `out`."""
    task, shots, items = cell
    secs, resp, res, reqs, counters = _runs(bench, task, shots, items, out.failures)
    n = len(next(iter(resp.values())))
    generation = isinstance(next(iter(resp.values()))[0][0][0], str)
    first = next(iter(reqs.values()))
    outputs = [x[0][0] for x in next(iter(resp.values()))] if generation else []
    max_gen = first[0].args[1].get("max_gen_toks", 256) if generation else 0
    work = cell_work(bench.tokenizer, first, outputs, max_gen)
    t_pre, t_dec = bound_seconds(work, bench.sizes, bench.peaks)
    medians = {b: statistics.median(secs[b]) for b in bench.backends}
    out.medians.append((task, shots, n, generation, medians))
    if generation and "genft-hf" in bench.backends:
        out.gen_profile.append((task, shots, n, counters, t_pre, t_dec))
    elif "genft-hf" in bench.backends:
        out.matmul_shares[(task, shots)] = t_pre / medians["genft-hf"]
        out.cls_profile.append((task, shots, n, *_profiled_run(bench, task, shots, items), t_pre))
    for b in bench.backends:
        same = ""
        if b == "genft-hf" and "hf" in resp:
            parted, max_d = _parted(resp["hf"], resp[b], bench.tol, bench.rel)
            near_tie = bench.bf16 and generation  # bf16 greedy texts may part at near-ties: counted, shown
            same = ("yes" if not parted else f"{parted} of {n} differ" if near_tie else "NO") + (
                "" if generation else f" (max d {max_d:.1e})")
            if parted and not near_tie:
                out.failures.append(f"{task} {shots}-shot: genft-hf differs from hf")
        med = medians[b]
        share = (t_pre + t_dec) / med
        flops_share = "" if generation else f"{100 * t_pre / med:.0f}%"
        out.rows.append([task, shots, n, b, f"{n / med:.2f}", " / ".join(f"{s:.1f}" for s in secs[b]),
                         f"{100 * share:.0f}%", flops_share, same, _metric(task, res[b])])
        out.raw.append({"task": task, "shots": shots, "items": n, "backend": b, "seconds": secs[b],
                        "items_per_s": n / med, "roofline_share": share, "work": work,
                        "bound_prefill_s": t_pre, "bound_decode_s": t_dec, "identical_to_hf": same})


def _runs(bench: Bench, task: str, shots: int, items: int, failures: list) -> tuple:
    """The cell's --reps runs on every backend, the backends' order rotated each run: (model seconds per run,
    responses, lm-eval's results, requests: each {backend: ...} of its last run; genft-hf's counters of its
    last run).  A backend whose responses differ between its own runs adds a failure."""
    from genft import harness

    secs: dict[str, list[float]] = {b: [] for b in bench.backends}
    resp, res, reqs, counters = {}, {}, {}, {}
    for rep in range(bench.reps):
        for b in rotated(bench.backends, rep):
            bench.timers[b]["seconds"] = 0.0
            if b == "genft-hf":
                bench.lms[b].stats.clear()
            r = harness.evaluate(bench.lms[b], [task], num_fewshot=shots, limit=items, tm=bench.tm, log_samples=True)
            secs[b].append(bench.timers[b]["seconds"])
            if b == "genft-hf":
                counters = dict(bench.lms[b].stats)
            got = _responses(r, task)
            if b in resp and not _same(resp[b], got, bench.tol, bench.rel)[0]:
                failures.append(f"{task} {shots}-shot: {b} differs between its own runs")
            resp[b], res[b], reqs[b] = got, r["results"][task], bench.timers[b]["requests"]
            print(f"{task} {shots}-shot x{items} run {rep + 1} {b}: {secs[b][-1]:.1f}s", flush=True)
    return secs, resp, res, reqs, counters


def _profiled_run(bench: Bench, task: str, shots: int, items: int) -> tuple[float, dict, dict]:
    """One more genft-hf run of a classification cell, under torch's profiler and outside the medians: (its
    model seconds, its operator time split by eval_backends.op_seconds, genft-hf's counters)."""
    from genft import harness

    bench.timers["genft-hf"].update(seconds=0.0, profile=True)
    bench.lms["genft-hf"].stats.clear()
    harness.evaluate(bench.lms["genft-hf"], [task], num_fewshot=shots, limit=items, tm=bench.tm)
    return (bench.timers["genft-hf"]["seconds"], op_seconds(bench.timers["genft-hf"]["ops"]),
            dict(bench.lms["genft-hf"].stats))


# --------------------------------------------------------------------------- the least work


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
