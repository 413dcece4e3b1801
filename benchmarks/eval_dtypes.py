#!/usr/bin/env python
"""Evaluation speed in float32 and in bf16, side by side in one run: genft-hf on eval_speed.py's default cells.

    python benchmarks/eval_dtypes.py --data-dir data

genft-hf loads the model twice, in float32 and in bf16 weights.  Every cell runs --reps times in each dtype,
the two alternating (which goes first rotates with every run), and the median model time is reported (model
time as eval_speed.py measures it: lm-eval's `loglikelihood` / `generate_until` calls).  Both dtypes' speeds are
shown as shares of one limit, the bf16 one: the cell's least work (eval_cells.cell_work and bound_seconds;
eval_speed.py's docstring says how it is counted) at the bf16 matmul FLOP/s and memory bandwidth measured here
(the float32 peak is measured and shown too).  Targets, on a CPU with native bf16: bf16 at least 1.8x float32's
items/s on every classification cell and 1.3x on every generation cell.  'same prediction': items whose
prediction is the same in both dtypes (classification: the option with the highest log-likelihood; generation:
the normalized text).  The section `eval_speed:dtypes` of reports/benchmarks.md is written (others are kept).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))
from eval_backends import timed  # noqa: E402
from eval_cells import _responses, bound_seconds, cell_work  # noqa: E402
from eval_report import DEFAULT_MODEL  # noqa: E402
from eval_speed import PRESETS, _parse_cell, data_root  # noqa: E402
from report_section import write_section  # noqa: E402
from roofline import machine_peaks, model_sizes  # noqa: E402
from run_conditions import check_dtype, machine_text, now_text, offline_environment, rotated  # noqa: E402

from genft.metrics import clean_generation  # noqa: E402

DTYPES = ("float32", "bfloat16")
TARGETS = {"classification": 1.8, "generation": 1.3}  # bf16 items/s over float32's, per cell kind


def predictions(resps: list) -> list:
    """Per item: the generated text (normalized) or the index of the option with the highest log-likelihood."""
    out = []
    for r in resps:
        if isinstance(r[0][0], str):
            out.append(clean_generation(r[0][0]))
        else:
            out.append(max(range(len(r)), key=lambda i: float(r[i][0][0])))
    return out


def measure(lms: dict, timers: dict, tm, tok, sizes: dict, peaks: dict, cells: list, reps: int, log=print) -> list:
    """One dict per cell: both dtypes' model seconds per run, the bf16 bound, kind, items and same predictions."""
    from genft import harness

    rows = []
    for task, shots, items in cells:
        secs: dict = {d: [] for d in DTYPES}
        preds, reqs, outputs = {}, None, []
        for rep in range(reps):
            for d in rotated(list(DTYPES), rep):
                timers[d]["seconds"] = 0.0
                r = harness.evaluate(lms[d], [task], num_fewshot=shots, limit=items, tm=tm, log_samples=True)
                secs[d].append(timers[d]["seconds"])
                resps = _responses(r, task)
                if d in preds and predictions(resps) != preds[d]:
                    raise SystemExit(f"{task} {shots}-shot: genft-hf in {d} gave other predictions in run {rep + 1}")
                preds[d] = predictions(resps)
                if d == "bfloat16":
                    reqs = timers[d]["requests"]
                    outputs = [x[0][0] for x in resps] if isinstance(resps[0][0][0], str) else []
                log(f"{task} {shots}-shot x{items} run {rep + 1} {d}: {secs[d][-1]:.1f}s")
        generation = bool(outputs)
        max_gen = reqs[0].args[1].get("max_gen_toks", 256) if generation else 0
        bound = sum(bound_seconds(cell_work(tok, reqs, outputs, max_gen), sizes, peaks))
        same = sum(a == b for a, b in zip(preds["float32"], preds["bfloat16"]))
        rows.append({"task": task, "shots": shots, "items": len(preds["float32"]), "secs": secs, "bound_s": bound,
                     "kind": "generation" if generation else "classification", "same": same})
    return rows


def render(rows: list, argv: list, model: str, peaks: dict, fp32_peaks: dict, after: dict, load: tuple,
           wall_s: float, reps: int) -> str:
    """The section's Markdown (with whether every cell meets its kind's target)."""
    from genft.report.markdown import table

    body, met = [], True
    for r in rows:
        med = {d: statistics.median(r["secs"][d]) for d in DTYPES}
        ratio = med["float32"] / med["bfloat16"]
        met &= ratio >= TARGETS[r["kind"]]
        body.append([r["task"], r["shots"], r["items"], r["kind"]]
                    + [f"{r['items'] / med[d]:.2f}" for d in DTYPES] + [f"{ratio:.2f}x"]
                    + [f"{100 * r['bound_s'] / med[d]:.0f}%" for d in DTYPES]
                    + [" / ".join(f"{s:.1f}" for s in r["secs"][d]) for d in DTYPES]
                    + [f"{r['same']} of {r['items']}"])
    head = ["task", "shots", "items", "kind", "fp32 items/s", "bf16 items/s", "bf16 / fp32", "fp32 % of bf16 limit",
            "bf16 % of bf16 limit", "fp32 model s per run", "bf16 model s per run", "same prediction"]
    verdict = "**met**" if met else "**missed**"
    misses = [f"{r[0]} {r[1]}-shot {r[6]}" for r, x in zip(body, rows) if float(r[6][:-1]) < TARGETS[x["kind"]]]
    lines = [
        "## Evaluation speed in float32 and bf16, side by side in one run (genft-hf)", "",
        f"Generated by `python benchmarks/eval_dtypes.py {' '.join(argv)}`.".replace(" `.", "`."),
        "genft-hf in float32 and in bf16 weights, the same cells and items, the two dtypes alternating in every run;",
        "items/s from the median model time of the runs; both dtypes' shares are of the bf16 limit (the cell's least",
        "work at the measured bf16 matmul FLOP/s and memory bandwidth; see the script's docstring).", "",
        table(body, head), "",
        f"Targets (bf16 over fp32: >= {TARGETS['classification']}x on classification, >= {TARGETS['generation']}x on "
        f"generation, every cell): {verdict}" + (f" (below: {', '.join(misses)})" if misses else "") + ".", "",
        f"Conditions: {now_text()}; {model}; {machine_text()}; peaks {peaks['flops'] / 1e9:.0f} GFLOP/s bf16 and "
        f"{fp32_peaks['flops'] / 1e9:.0f} GFLOP/s fp32 matmul, {peaks['bandwidth'] / 1e9:.1f} GB/s read (measured "
        f"again after the cells: {after['flops'] / 1e9:.0f} GFLOP/s bf16); load average {load[0]:.2f} / {load[1]:.2f} "
        f"(1 min, before / after); {reps} runs per cell and dtype; wall time {wall_s / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default", help="eval_speed.py's cell sets")
    ap.add_argument("--cell", action="append", default=None, metavar="TASK:SHOTS:ITEMS",
                    help="a cell (repeatable) instead of the preset's")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--study-data", default=str(REPO.parent / "shared" / "paper-data"))
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"), help="the report ('' = none)")
    args = ap.parse_args(argv)
    check_dtype(ap, "bfloat16")
    if args.reps < 1:
        ap.error("--reps: must be >= 1")
    cells = [_parse_cell(c) for c in args.cell] if args.cell else PRESETS[args.preset]
    offline_environment()
    import torch

    torch.set_num_threads(args.threads)
    import genft.backend  # noqa: F401  (registers genft-hf)
    from genft import harness
    from genft.models import resolve

    pretrained = resolve(args.model)
    root = data_root(args.data_dir, args.study_data)
    peaks, fp32_peaks = machine_peaks(args.threads, dtype="bfloat16"), machine_peaks(args.threads)
    load_before = os.getloadavg()[0]
    timers = {d: {"seconds": 0.0} for d in DTYPES}
    lms = {}
    for d in DTYPES:
        lm = harness.load_model(pretrained, backend="genft-hf", batch_size=args.batch_size, dtype=d)
        lm._fast_ok()  # its one-time check of genft's attention on this model, outside the timed calls
        lms[d] = timed(lm, timers[d])
    started = time.time()
    rows = measure(lms, timers, harness.task_manager(pretrained, root), lms["bfloat16"].tokenizer,
                   model_sizes(lms["bfloat16"].model), peaks, cells, args.reps)
    wall = time.time() - started
    load = (load_before, os.getloadavg()[0])
    after = machine_peaks(args.threads, dtype="bfloat16")
    text = render(rows, sys.argv[1:] if argv is None else argv, args.model, peaks, fp32_peaks, after, load,
                       wall, args.reps)
    if args.out:
        write_section(args.out, "eval_speed:dtypes", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
