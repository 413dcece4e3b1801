#!/usr/bin/env python
"""bf16's own spread: how far bf16 results move, and how far genft-hf's are from lm-eval's `hf` in bf16.

    python benchmarks/bf16_spread.py --data-dir data

benchmarks/eval_speed.py's default cells run on five evaluators of one model: lm-eval's `hf` in float32 at
batch 8 (the reference), genft-hf in float32, `hf` in bf16 at batch 8 and at batch 1, and genft-hf in bf16.
Classification: every request's (an item's label continuation) log-likelihood and greedy flag; reported are
each evaluator's distance from the float32 reference (mean, 95th percentile and largest |d|, greedy flags
that differ), then genft-hf against `hf` in bf16 next to `hf` against itself at the other batch size.
Generation: the greedy texts as the tasks score them (genft.metrics.clean_generation), the same comparisons
counted in items whose text differs.

Why `hf` against itself: in bf16 a log-likelihood is a difference of bf16-rounded logits (this model's top
logits lie in [16, 32), where bf16 steps by 0.125), and the hidden states that make them depend on how the
positions are grouped into matrix products; a greedy text parts wherever two candidate tokens are within that
rounding.  `hf` at batch 1 and at batch 8 computes the same thing grouped differently: what separates them is
bf16's own spread, within which two correct bf16 evaluators agree.  benchmarks/eval_speed.py judges genft-hf
against `hf` in bf16 within that spread (eval_cells.BF16_LL_ABS; texts counted, not failed).  The section
`bf16_spread` of reports/benchmarks.md is written (other sections are kept).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))
from eval_cells import BF16_LL_ABS, _responses  # noqa: E402
from eval_report import DEFAULT_MODEL  # noqa: E402
from eval_speed import CELLS, data_root  # noqa: E402
from report_section import write_section  # noqa: E402
from run_conditions import check_dtype, machine_text, now_text, offline_environment  # noqa: E402

from genft.metrics import clean_generation  # noqa: E402

REFERENCE = ("hf", "float32", 8)
EVALUATORS = (REFERENCE, ("genft-hf", "float32", 8), ("hf", "bfloat16", 8), ("hf", "bfloat16", 1),
              ("genft-hf", "bfloat16", 8))
PAIRS = ((("hf", "bfloat16", 8), ("genft-hf", "bfloat16", 8)), (("hf", "bfloat16", 8), ("hf", "bfloat16", 1)))


def name(ev: tuple) -> str:
    backend, dtype, batch = ev
    return f"{backend} {dtype} batch {batch}"


def outputs(pretrained: str, root: Path, cells: list, log=print) -> dict:
    """{(evaluator, task, shots): per request (log-likelihood, greedy) for classification, per item the
    normalized text for generation}, each evaluator loaded once."""
    from genft import harness

    tm = harness.task_manager(pretrained, root)
    out = {}
    for ev in EVALUATORS:
        backend, dtype, batch = ev
        lm = harness.load_model(pretrained, backend=backend, batch_size=batch, dtype=dtype)
        for task, shots, items in cells:
            t0 = time.time()
            resps = _responses(harness.evaluate(lm, [task], num_fewshot=shots, limit=items, tm=tm, log_samples=True),
                               task)
            out[(ev, task, shots)] = ([clean_generation(r[0][0]) for r in resps] if isinstance(resps[0][0][0], str)
                                      else [(float(x[0][0]), bool(x[0][1])) for r in resps for x in r])
            log(f"{name(ev)}: {task} {shots}-shot, {len(out[(ev, task, shots)])} results, {time.time() - t0:.0f}s")
        del lm
    return out


def distance(a: list, b: list) -> dict:
    """Classification: |d| of the log-likelihoods (mean, p95, max) and greedy flags that differ; generation:
    texts that differ."""
    if isinstance(a[0], str):
        return {"texts": sum(x != y for x, y in zip(a, b, strict=True))}
    d = sorted(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))
    return {"mean": statistics.fmean(d), "p95": d[min(len(d) - 1, int(0.95 * len(d)))], "max": d[-1],
            "greedy": sum(x[1] != y[1] for x, y in zip(a, b))}


def _row(task, shots, n, label, d) -> list:
    if "texts" in d:
        return [task, shots, label, f"{d['texts']} of {n}"]
    return [task, shots, n, label, f"{d['mean']:.4f}", f"{d['p95']:.4f}", f"{d['max']:.4f}", d["greedy"]]


def render(res: dict, cells: list, argv: list, model: str, wall_s: float) -> tuple[str, bool]:
    """The section's Markdown, and whether genft-hf's log-likelihoods are within hf's own bf16 spread (at least
    BF16_LL_ABS) with the same greedy flags on every classification cell."""
    from genft.report.markdown import table

    rows = {"cls_ref": [], "cls_pair": [], "gen_ref": [], "gen_pair": []}
    within = True
    for task, shots, _ in cells:
        ref = res[(REFERENCE, task, shots)]
        kind = "gen" if isinstance(ref[0], str) else "cls"
        for ev in EVALUATORS[1:]:
            rows[f"{kind}_ref"].append(_row(task, shots, len(ref), name(ev), distance(res[(ev, task, shots)], ref)))
        spread = {b: distance(res[(a, task, shots)], res[(b, task, shots)]) for a, b in PAIRS}
        for a, b in PAIRS:
            rows[f"{kind}_pair"].append(_row(task, shots, len(ref), f"{name(b)} vs {name(a)}", spread[b]))
        if kind == "cls":
            genft, own = spread[PAIRS[0][1]], spread[PAIRS[1][1]]
            within &= genft["max"] <= max(own["max"], BF16_LL_ABS) and genft["greedy"] == 0
    ll_head = ["task", "shots", "requests", "evaluator", "mean |d|", "p95 |d|", "max |d|", "greedy flags differ"]
    text_head = ["task", "shots", "evaluator", "texts that differ"]
    lines = [
        "## bf16's own spread: genft-hf and lm-eval's `hf` against float32 and against each other", "",
        f"Generated by `python benchmarks/bf16_spread.py {' '.join(argv)}`.".replace(" `.", "`."),
        f"Model {model}; {now_text()}; {machine_text()}; {wall_s / 60:.1f} min.  d: a request's log-likelihood",
        "difference; texts: greedy generations as the tasks score them (the script's docstring says why bf16",
        "spreads).", "",
        "Classification, against `hf` in float32 at batch 8:", "", table(rows["cls_ref"], ll_head), "",
        "Classification, genft-hf against `hf` in bf16, next to `hf` against itself at batch 1:", "",
        table(rows["cls_pair"], ["task", "shots", "requests", "pair", "mean |d|", "p95 |d|", "max |d|",
                                 "greedy flags differ"]), "",
        "Generation, against `hf` in float32 at batch 8:", "", table(rows["gen_ref"], text_head), "",
        "Generation, genft-hf against `hf` in bf16, next to `hf` against itself at batch 1:", "",
        table(rows["gen_pair"], ["task", "shots", "pair", "texts that differ"]), "",
        f"genft-hf's log-likelihoods within `hf`'s own bf16 spread (its largest |d| between batch sizes, at least "
        f"{BF16_LL_ABS}) with the same greedy flags on every classification cell: **{'yes' if within else 'no'}**.  "
        f"eval_speed.py's bf16 check uses |d| <= max({BF16_LL_ABS}, 2**-6 x |ll|) and counts differing texts.",
    ]
    return "\n".join(lines) + "\n", within


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--study-data", default=str(REPO.parent / "shared" / "paper-data"))
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"), help="the report ('' = none)")
    args = ap.parse_args(argv)
    check_dtype(ap, "bfloat16")
    offline_environment()
    import torch

    torch.set_num_threads(args.threads)
    import genft.backend  # noqa: F401  (registers genft-hf)
    from genft.models import resolve

    pretrained = resolve(args.model)
    started = time.time()
    res = outputs(pretrained, data_root(args.data_dir, args.study_data), CELLS)
    text, within = render(res, CELLS, sys.argv[1:] if argv is None else argv, args.model, time.time() - started)
    if args.out:
        write_section(args.out, "bf16_spread", text)
    print(text)
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
