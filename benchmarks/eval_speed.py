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
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:  # the modules next to this file
    sys.path.insert(0, str(REPO / "benchmarks"))
from eval_backends import study_model, timed  # noqa: E402
from eval_cells import BF16_LL_ABS, BF16_LL_REL, Bench, Measured, measure_cell  # noqa: E402
from eval_report import DEFAULT_MODEL, Conditions, own_block, render, write_report  # noqa: E402
from roofline import decode_matmuls, machine_peaks, model_sizes, peak_label  # noqa: E402
from run_conditions import check_dtype, offline_environment  # noqa: E402

BACKENDS = ("genft-hf", "hf", "study")

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


def _parse_cell(text: str):
    task, shots, items = text.split(":")
    return task, int(shots), int(items)


def parser() -> argparse.ArgumentParser:
    """The command line's options (the module docstring is its help)."""
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
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked: args.backends becomes the list of backends to run, args.cells the cells
    (task, shots, items), and in bf16 args.tol is at least BF16_LL_ABS."""
    ap = parser()
    args = ap.parse_args(argv)
    check_dtype(ap, args.dtype)
    if args.dtype == "bfloat16":
        args.tol = max(args.tol, BF16_LL_ABS)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(args.backends) - set(BACKENDS) or not args.backends:
        ap.error(f"--backends: choose from {', '.join(BACKENDS)}")
    if sum(bool(x) for x in (args.cell, args.quick, args.preset)) > 1:
        ap.error("choose one of --cell, --quick, --preset")
    args.cells = ([_parse_cell(c) for c in args.cell] if args.cell
                  else PRESETS[args.preset or ("quick" if args.quick else "default")])
    return args


def data_root(data_dir: str | None, study_data: str) -> Path:
    """The data folder: --data-dir or $GENFT_DATA_DIR where it holds data, else the study's release imported
    into a temporary folder, with genft's builtin sets written next to it."""
    from genft.data import data_dir as default_data_dir

    root = default_data_dir(data_dir)
    if not (root / "sentiment").is_dir():
        from genft.builtin import generate
        from genft.data import import_study

        root = Path(tempfile.mkdtemp(prefix="genft-bench-data-"))
        print(f"importing the study's data from {study_data} into {root}", flush=True)
        import_study(Path(study_data), root, log=lambda *_: None)
        generate(root, log=lambda *_: None)
    return root


def load_bench(args, pretrained: str, root: Path, peaks: dict) -> Bench:
    """Every backend of args.backends loaded once (genft.backend imported: genft-hf registered), its model calls
    timed (eval_backends.timed), and lm-eval's task manager for genft's tasks on `root`."""
    from genft import harness

    tm = harness.task_manager(pretrained, root)
    timers = {b: {"seconds": 0.0} for b in args.backends}
    lms = {}
    for b in args.backends:
        lm = (study_model(pretrained, args.batch_size, logits=args.study_logits, dtype=args.dtype) if b == "study"
              else harness.load_model(pretrained, backend=b, batch_size=args.batch_size, dtype=args.dtype))
        if b == "genft-hf":
            lm._fast_ok()  # its one-time check of genft's attention on this model: paid once per load, as loading is
        lms[b] = timed(lm, timers[b])
    any_lm = next(iter(lms.values()))
    bf16 = args.dtype == "bfloat16"
    # bf16: hf's log-probabilities are bf16-rounded (tests/test_backend_variants.py: within 2**-6 relative of genft-hf's),
    # and a greedy text may part from hf's at a bf16 near-tie: such items are counted, not failures
    return Bench(backends=args.backends, lms=lms, timers=timers, tm=tm, tokenizer=any_lm.tokenizer,
                 sizes=model_sizes(any_lm.model), peaks=peaks, reps=args.reps, tol=args.tol,
                 rel=BF16_LL_REL if bf16 else 0.0, bf16=bf16)


def main(argv=None) -> int:
    args = parse_args(argv)
    bf16 = args.dtype == "bfloat16"
    offline_environment()
    import torch

    torch.set_num_threads(args.threads)
    import genft.backend  # noqa: F401  (registers genft-hf)
    from genft.models import resolve

    root = data_root(args.data_dir, args.study_data)
    pretrained = resolve(args.model)
    peaks = machine_peaks(args.threads, dtype=args.dtype)
    fp32_peak = peaks if not bf16 else machine_peaks(args.threads)
    print(f"machine: {peaks['flops'] / 1e9:.0f} GFLOP/s {peak_label(peaks)} matmul"
          + (f" ({fp32_peak['flops'] / 1e9:.0f} fp32)" if bf16 else "") + f", {peaks['bandwidth'] / 1e9:.1f} GB/s read",
          flush=True)
    load_before = os.getloadavg()
    bench = load_bench(args, pretrained, root, peaks)
    step = decode_matmuls(next(iter(bench.lms.values())).model, args.threads)

    out = Measured()
    started = time.time()
    for cell in args.cells:
        measure_cell(bench, cell, out)
    total = time.time() - started
    load_after = os.getloadavg()
    peaks_after = machine_peaks(args.threads, dtype=args.dtype)  # again: how much the machine's speed moved

    cond = Conditions(pretrained=pretrained, sizes=bench.sizes, step=step, peaks=peaks, fp32_peak=fp32_peak,
                      peaks_after=peaks_after, load_before=load_before, load_after=load_after, wall_s=total)
    text = render(args, argv if argv is not None else sys.argv[1:], cond, out)
    if args.out:
        write_report(Path(args.out), text, own_block(args.model, args.dtype))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "peaks": peaks, "peaks_after": peaks_after, "sizes": bench.sizes, "threads": args.threads,
            "decode_matmuls": step, "generation_counters": [list(c) for c in out.gen_profile],
            "classification_profile": [[t, k, n, c, o, st, b] for t, k, n, c, o, st, b in out.cls_profile],
            "cells": out.raw, "failures": out.failures}, indent=1))
    print(text)
    return 1 if out.failures else 0


if __name__ == "__main__":
    sys.exit(main())
