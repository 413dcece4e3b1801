#!/usr/bin/env python
"""genft-hf before and after a change: the same cells with an older commit's `src/` and with this tree's.

Each version runs in its own process (`eval_speed.py --backends genft-hf --reps 1`), alternating
old/new, new/old, ... for `--reps` rounds; the median model time per cell and version is printed as a
Markdown table (items/s, speed-up, share of the roofline; see eval_speed.py).

    python benchmarks/compare_versions.py a18a729 --threads 1 \\
        --cell genft_summary_xsum:0:20 --cell genft_summary_xsum:1:20 \\
        --cell genft_question_socialiqa:0:20 --cell genft_question_socialiqa:1:20
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref", help="the older commit (its src/ is exported to a temporary folder)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cell", action="append", required=True, metavar="TASK:SHOTS:ITEMS")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="genft-compare-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.ref, "src"], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp / "old")
    srcs = {"old": tmp / "old" / "src", "new": REPO / "src"}
    common = [sys.executable, str(REPO / "benchmarks" / "eval_speed.py"), "--backends", "genft-hf", "--reps", "1",
              "--threads", str(args.threads), "--model", args.model, "--out", ""] + sum((["--cell", c] for c in args.cell), [])
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    env = dict(os.environ, GENFT_TASKS_DIR=str(REPO / "harness_tasks"))
    runs: dict[tuple, dict[str, list[float]]] = {}
    items: dict[tuple, int] = {}
    share: dict[tuple, dict[str, list[float]]] = {}
    for rep in range(args.reps):
        for version in (("old", "new") if rep % 2 == 0 else ("new", "old")):
            out = tmp / f"{version}-{rep}.json"
            subprocess.run(common + ["--json", str(out)], check=True, env=dict(env, PYTHONPATH=str(srcs[version])),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for cell in json.loads(out.read_text())["cells"]:
                key = (cell["task"], cell["shots"])
                items[key] = cell["items"]
                runs.setdefault(key, {}).setdefault(version, []).append(cell["seconds"][0])
                share.setdefault(key, {}).setdefault(version, []).append(cell["roofline_share"])
            print(f"round {rep + 1}: {version} done", file=sys.stderr, flush=True)
    print(f"| cell | items | {args.ref} items/s | this tree items/s | speed-up | % roofline before / after | model s per run (before; after) |")
    print("|---|---|---|---|---|---|---|")
    for key, by in runs.items():
        old, new = statistics.median(by["old"]), statistics.median(by["new"])
        print(f"| {key[0]} {key[1]}-shot | {items[key]} | {items[key] / old:.2f} | {items[key] / new:.2f} | {old / new:.2f}x"
              f" | {100 * statistics.median(share[key]['old']):.0f}% / {100 * statistics.median(share[key]['new']):.0f}%"
              f" | {', '.join(f'{s:.1f}' for s in by['old'])}; {', '.join(f'{s:.1f}' for s in by['new'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
