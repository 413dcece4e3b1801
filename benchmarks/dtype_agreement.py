"""What evaluating in bf16 changes: the same checkpoints' cells in two dtypes, item by item.

    python benchmarks/dtype_agreement.py --a reports/study-cpu/cells.jsonl.gz --b runs/study-cpu-bf16

Each side is an evidence file, a suite's output folder or a suite file.  Cells are matched on the checkpoint
(a base model by its id, a fine-tuned one by its run and the fingerprint of its trained weights: a pair whose
weights differ is an error, since it would mix training variance into the comparison), the test set, prompt,
shots and demonstrations.  Per task kind: the share of items with the same prediction (classification: the
first-token label; generation: the normalized text), the score differences b - a with their paired bootstrap
intervals, and how many cells' intervals exclude zero.  Then the findings are judged on each side under the
same settings, and every finding part whose verdict differs is listed (`genft report --compare`'s table).
The section `dtype_agreement` of reports/benchmarks.md is written (other sections are kept).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from report_section import write_section  # noqa: E402

from genft.prompts import get_task  # noqa: E402
from genft.report import diagnostics, load  # noqa: E402
from genft.report.compare import PartVerdict, compare  # noqa: E402
from genft.report.findings import findings  # noqa: E402
from genft.report.markdown import table  # noqa: E402
from genft.report.model import SuiteData  # noqa: E402
from genft.report.stats import paired_bootstrap  # noqa: E402
from genft.suite.report_settings import ReportSettings  # noqa: E402


def identity(rec) -> tuple:
    ck = (rec.checkpoint.id,) if rec.finetune is None else (rec.finetune.run,)
    return ck + (rec.task, rec.dataset, rec.prompt, rec.shots, rec.demo_seed)


def pairs(a_recs, b_recs) -> list[tuple]:
    """(a, b) records of the same cell, on the same checkpoint weights."""
    b_by = {identity(r): r for r in b_recs}
    out = []
    for ra in a_recs:
        rb = b_by.get(identity(ra))
        if rb is None:
            continue
        if ra.finetune is not None and ra.finetune.weights_sha256 != rb.finetune.weights_sha256:
            raise SystemExit(f"{ra.finetune.run}: the two sides' trained weights differ "
                             f"({ra.finetune.weights_sha256[:12]} vs {rb.finetune.weights_sha256[:12]}): retrained "
                             "checkpoints, not the same ones; compare cells of one set of checkpoints")
        out.append((ra, rb))
    return out


def cell_row(ra, rb) -> dict:
    common = sorted(set(ra.doc_ids) & set(rb.doc_ids))
    ia = {d: i for i, d in enumerate(ra.doc_ids)}
    ib = {d: i for i, d in enumerate(rb.doc_ids)}
    oa, ob = diagnostics.outputs(ra), diagnostics.outputs(rb)
    metric = ra.primary_metric
    va = [ra.items[metric][ia[d]] for d in common]
    vb = [rb.items[metric][ib[d]] for d in common]
    diff, lo, hi = paired_bootstrap(vb, va)
    return {"kind": get_task(ra.task).kind, "n": len(common), "same": sum(oa[ia[d]] == ob[ib[d]] for d in common),
            "a": float(np.mean(va)), "b": float(np.mean(vb)), "diff": diff, "lo": lo, "hi": hi}


def verdicts(name, recs, runs, settings) -> list[PartVerdict]:
    s = SuiteData(name, recs, runs, settings)
    return [PartVerdict(f.num, f.title, p.name, p.verdict, p.counts) for f in findings(s) for p in f.parts]


def section(a_src, b_src, a_label, b_label) -> str:
    a_name, a_recs, a_runs, a_set = load(a_src)
    b_name, b_recs, b_runs, _ = load(b_src)
    matched = pairs(a_recs, b_recs)
    if not matched:
        raise SystemExit("no cell of one side matches a cell of the other")
    rows = [cell_row(ra, rb) for ra, rb in matched]
    by = defaultdict(list)
    for r in rows:
        by[r["kind"]].append(r)
    summary = []
    for kind in sorted(by):
        rs = by[kind]
        n = sum(r["n"] for r in rs)
        d = np.array([r["diff"] for r in rs])
        excl = sum(r["lo"] > 0 or r["hi"] < 0 for r in rs)
        summary.append([kind, str(len(rs)), str(n), f"{sum(r['same'] for r in rs) / n:.3f}",
                        f"{np.mean(np.abs(d)):.4f}", f"{np.max(np.abs(d)):.4f}", f"{d.mean():+.4f}",
                        f"{excl} of {len(rs)}"])
    settings = a_set or ReportSettings()  # both sides judged under the same settings
    change = compare(verdicts(a_name, [ra for ra, _ in matched], a_runs, settings),
                     verdicts(b_name, [rb for _, rb in matched], b_runs, settings))
    lines = [f"## Evaluation dtype: {a_label} vs {b_label} on the same checkpoints", "",
             f"`python benchmarks/dtype_agreement.py --a {a_src} --b {b_src}`: {len(matched)} cells matched on "
             f"checkpoint weights, test set, prompt, shots and demonstrations (a = {a_label}, b = {b_label}). "
             "*same* = the share of items with the same prediction (classification: the first-token label; "
             "generation: the normalized text); differences are b − a of the primary metric with paired bootstrap "
             "intervals (2000 resamples).", "",
             table(summary, ["kind", "cells", "items", "same prediction", "mean |Δ score|", "max |Δ score|",
                             "mean Δ (b − a)", "cells whose interval excludes 0"]), "",
             "Findings judged on each side under the same report settings (parts whose verdict differs):", "",
             change]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="the reference side (float32): evidence file, output folder or suite")
    ap.add_argument("--b", required=True, help="the other side (bfloat16)")
    ap.add_argument("--a-label", default="float32")
    ap.add_argument("--b-label", default="bfloat16")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"))
    args = ap.parse_args(argv)
    text = section(args.a, args.b, args.a_label, args.b_label)
    write_section(args.out, "dtype_agreement", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
