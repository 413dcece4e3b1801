#!/usr/bin/env python
"""Evaluation speed: lm-eval's `hf` model vs genft's `genft-hf` (shared-prefix KV reuse) on the same cells.

Both backends load the same checkpoint (SmolLM2-135M by default), run the same genft harness tasks with the
same batch size and thread count, and must give identical scores: per item the same log-likelihoods (within
1e-4) and greedy flags, the same generated texts, the same metrics.  Items/s (model time: the backend's
loglikelihood / generate_until calls, as lm-eval makes them) and the speed-up go to reports/benchmarks.md.

    python benchmarks/eval_speed.py                      # default cells, 2 threads
    python benchmarks/eval_speed.py --threads 1 --quick  # a busy machine / a smoke run

Data: $GENFT_DATA_DIR or --data-dir; if neither holds data, the study's release (../shared/paper-data or
--study-data) is imported into a temporary folder first.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (task, shots, items, kind)
CELLS = [
    ("genft_sentiment_amazon", 0, 100, "0-shot classification"),
    ("genft_sentiment_amazon", 4, 60, "k-shot classification"),
    ("genft_nli_mnli_m", 5, 40, "k-shot classification"),
    ("genft_summary_xsum", 2, 10, "k-shot generation"),
    ("genft_question_socialiqa", 2, 16, "k-shot generation"),
]
QUICK = [
    ("genft_sentiment_amazon", 0, 20, "0-shot classification"),
    ("genft_nli_mnli_m", 5, 10, "k-shot classification"),
    ("genft_summary_xsum", 2, 4, "k-shot generation"),
]


def _parse_cell(text: str):
    task, shots, items, *kind = text.split(":")
    return task, int(shots), int(items), kind[0] if kind else ("generation" if "summary" in task or "question" in task else "classification")


def _timed(lm, bucket: dict):
    """Time the model calls lm-eval makes (instance attributes shadow the class methods)."""
    for name in ("loglikelihood", "generate_until"):
        orig = getattr(lm, name)

        def wrapper(requests, *args, _orig=orig, **kwargs):
            t0 = time.perf_counter()
            try:
                return _orig(requests, *args, **kwargs)
            finally:
                bucket["seconds"] += time.perf_counter() - t0

        setattr(lm, name, wrapper)
    return lm


def _compare(task, a, b, tol):
    """Per-item equality of two lm-eval runs (log_samples=True); returns (identical, max |d logprob|, note)."""
    sa, sb = a["samples"][task], b["samples"][task]
    if len(sa) != len(sb):
        return False, float("nan"), f"{len(sa)} vs {len(sb)} samples"
    max_d, bad = 0.0, []
    for x, y in zip(sorted(sa, key=lambda s: s["doc_id"]), sorted(sb, key=lambda s: s["doc_id"])):
        for ra, rb in zip(x["resps"], y["resps"]):
            va, vb = ra[0], rb[0]
            if isinstance(va, str):
                if va != vb:
                    bad.append(f"doc {x['doc_id']}: text differs")
            else:
                d = abs(float(va[0]) - float(vb[0]))
                max_d = max(max_d, d)
                if d > tol or bool(va[1]) != bool(vb[1]):
                    bad.append(f"doc {x['doc_id']}: logprob {va} vs {vb}")
    ma, mb = a["results"][task], b["results"][task]
    for key, val in ma.items():
        if isinstance(val, (int, float)) and "stderr" not in key and key != "samples" and mb.get(key) != val:
            bad.append(f"metric {key}: {val} vs {mb.get(key)}")
    return not bad, max_d, "; ".join(bad[:3])


def _metric_summary(res: dict) -> str:
    keep = ("acc,none", "acc_first,none", "acc_norm,none", "rougeL,none")
    vals = [f"{k.split(',')[0]} {res[k]:.3f}" for k in keep if isinstance(res.get(k), float)]
    return ", ".join(vals)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a genft model name or a model folder")
    ap.add_argument("--peft", default=None, help="a LoRA adapter folder (both backends)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (use 1 on a busy 2-core machine)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cell", action="append", default=None, metavar="TASK:SHOTS:ITEMS[:KIND]",
                    help="a cell to run (repeatable); default: %s" % ", ".join(f"{t}:{s}:{n}" for t, s, n, _ in CELLS))
    ap.add_argument("--quick", action="store_true", help="three small cells (a smoke run)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--study-data", default=str(REPO.parent / "shared" / "paper-data"))
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"))
    args = ap.parse_args(argv)

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
        from genft.data import import_study

        root = Path(tempfile.mkdtemp(prefix="genft-bench-data-"))
        print(f"importing the study's data from {args.study_data} into {root}", flush=True)
        import_study(Path(args.study_data), root, log=lambda *_: None)
    pretrained = resolve(args.model)
    cells = [_parse_cell(c) for c in args.cell] if args.cell else (QUICK if args.quick else CELLS)
    load_before = os.getloadavg()
    tm = harness.task_manager(pretrained, root)

    extra = {"peft": args.peft} if args.peft else {}
    timers = {b: {"seconds": 0.0} for b in ("hf", "genft-hf")}
    lms = {b: _timed(harness.load_model(pretrained, backend=b, batch_size=args.batch_size, **extra), timers[b])
           for b in ("hf", "genft-hf")}

    rows, failures = [], []
    started = time.time()
    for task, shots, items, kind in cells:
        out, secs = {}, {}
        for backend in ("genft-hf", "hf"):
            timers[backend]["seconds"] = 0.0
            t0 = time.perf_counter()
            out[backend] = harness.evaluate(lms[backend], [task], num_fewshot=shots, limit=items, tm=tm, log_samples=True)
            wall = time.perf_counter() - t0
            secs[backend] = timers[backend]["seconds"]
            print(f"{task} {shots}-shot x{items} {backend}: model {secs[backend]:.1f}s, wall {wall:.1f}s", flush=True)
        n = len(out["hf"]["samples"][task])
        same, max_d, note = _compare(task, out["hf"], out["genft-hf"], args.tol)
        if not same:
            failures.append(f"{task} {shots}-shot: {note}")
        hf_ips, g_ips = n / secs["hf"], n / secs["genft-hf"]
        rows.append([
            task, shots, kind, n,
            f"{hf_ips:.2f}", f"{g_ips:.2f}", f"{g_ips / hf_ips:.1f}x",
            ("yes" if same else "NO") + ("" if isinstance(out["hf"]["samples"][task][0]["resps"][0][0], str) else f" (max d {max_d:.1e})"),
            _metric_summary(out["hf"]["results"][task]),
        ])
    total = time.time() - started
    load_after = os.getloadavg()

    headers = ["task", "shots", "cell", "items", "hf items/s", "genft-hf items/s", "speed-up", "identical scores",
               "scores (both)"]
    info = [
        ["date", dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")],
        ["model", f"{args.model} ({pretrained})" + (f" + LoRA {args.peft}" if args.peft else "")],
        ["machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"],
        ["torch threads", str(args.threads)],
        ["batch size", str(args.batch_size)],
        ["load average before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f} (1 min; other users share the CPUs)"],
        ["versions", f"torch {torch.__version__}, transformers {transformers.__version__}, lm-eval {lm_eval.__version__}"],
        ["benchmark wall time", f"{total / 60:.1f} min"],
    ]
    text = "\n".join([
        "# Evaluation speed: `hf` vs `genft-hf`",
        "",
        "Generated by `python benchmarks/eval_speed.py` (" + " ".join(sys.argv[1:]) + "). Both backends run the",
        "same genft harness cells (study data, first-k demonstrations, same batch size and threads); items/s",
        "counts model time (the lm-eval `loglikelihood` / `generate_until` calls). 'identical scores' means the",
        "same greedy texts, log-likelihoods within " + f"{args.tol:g}" + " with the same greedy flags, and the same metrics.",
        "",
        tabulate(rows, headers=headers, tablefmt="github"),
        "",
        tabulate(info, headers=["", ""], tablefmt="github"),
        "",
    ] + ([f"**Differences:** {'; '.join(failures)}", ""] if failures else []))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
