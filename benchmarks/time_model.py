#!/usr/bin/env python
"""Recalibrate the suites' time model (genft.suite.estimate) from a finished suite run.

Reads every cell record in a suite's output folder (its `wall_s`, items, shots, labels) and every finished
fine-tune's manifest (its measured tokens/s), fits the constants of estimate.py's model by least squares

    classification cell: n * CLS_ITEM_S * (1 + CLS_SHOT * shots) * labels / 2
    generation cell:     n * (GEN_ITEM_S + GEN_SHOT_S * shots)
    fine-tune:           tokens / TRAIN_TOKENS_S

and prints, for the model in the code and the fitted one, the total estimated vs measured time and the median
per-cell ratio.  With --out it writes that table as its own section of reports/benchmarks.md (the
`time_model` section, benchmarks/report_section.py; the rest of the file is kept).

    python benchmarks/time_model.py runs/study-cpu --out reports/benchmarks.md
    python benchmarks/time_model.py runs/study-cpu --since 2026-12-01T07:00 --train-tokens-s 80 --out ...

--since keeps the cells (and fine-tunes) finished at or after a time: the part of a resumed run measured on an
idle machine.  --train-tokens-s replaces the fine-tunes' own figure (e.g. benchmarks/finetune_speed.py's
genft tokens/s, when the suite's fine-tunes ran under other load or with an older sft.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

sys.path.insert(0, str(REPO / "benchmarks"))

from report_section import write_section  # noqa: E402

from genft.prompts import get_task  # noqa: E402
from genft.suite import estimate, store  # noqa: E402


def fit(cells, manifests) -> dict:
    """Least-squares constants of estimate.py's model from measured cells and fine-tunes."""
    cls = [(c.shots, c.wall_s / c.n / (len(get_task(c.task).labels) / 2)) for c in cells
           if get_task(c.task).is_classification and c.n]
    gen = [(c.shots, c.wall_s / c.n) for c in cells if not get_task(c.task).is_classification and c.n]
    out: dict[str, float] = {}
    if len({s for s, _ in cls}) >= 2:  # per-item seconds = a + b * shots, weighted like the totals (by n)
        a, b = _line(cls)
        out["CLS_ITEM_S"], out["CLS_SHOT"] = a, b / a
    if len({s for s, _ in gen}) >= 2:
        out["GEN_ITEM_S"], out["GEN_SHOT_S"] = _line(gen)
    tps = [m.training.tokens_per_s for m in manifests.values() if m.training.tokens_per_s]
    if tps:
        out["TRAIN_TOKENS_S"] = statistics.median(tps)
    return out


def _line(points) -> tuple[float, float]:
    """y = a + b * x with a, b >= 0 (a demonstration never makes an item cheaper: a negative slope is noise)."""
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    (a, b), _ = nnls(np.stack([np.ones_like(x), x], axis=1), y)
    return float(a), float(b)


def _utc(text: str, what: str = "--since"):
    """An ISO time as an aware UTC datetime (naive = UTC); unreadable is an error naming `what`."""
    try:
        t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"{what}: {text!r} is not an ISO time (e.g. 2026-12-01T07:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def predict(c, k: dict, backend: str) -> float:
    """estimate.cell_seconds with the constants `k` (the thread count does not enter: the fit is per suite)."""
    return estimate.cell_seconds(c.task, c.shots, c.n, backend, None, cls_item_s=k["CLS_ITEM_S"],
                                 cls_shot=k["CLS_SHOT"] if backend == "genft-hf" else None,
                                 gen_item_s=k["GEN_ITEM_S"], gen_shot_s=k["GEN_SHOT_S"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="a suite's output folder (e.g. runs/study-cpu)")
    ap.add_argument("--out", default=None, help="write the table as a section of this Markdown file")
    ap.add_argument("--since", default=None, help="only cells / fine-tunes finished at or after this ISO time (UTC)")
    ap.add_argument("--train-tokens-s", type=float, default=None, help="training tokens/s measured elsewhere")
    a = ap.parse_args(argv)
    # every cell record of the folder (a run still under way or stopped counts too); one that does not read
    # is an error naming it
    cells = [store.read_cell(f) for f in sorted(store.cells_dir(Path(a.output)).glob("*.json"))]
    manifests = store.load_manifests(Path(a.output))
    if a.since:
        since = _utc(a.since)
        cells = [c for c in cells if _utc(c.provenance.time, f"cell {c.key}: provenance.time") >= since]
        manifests = {k: m for k, m in manifests.items()
                     if _utc(m.finished_at, f"fine-tune {k}: its manifest's finished_at") >= since}
    if not cells:
        print(f"{a.output}: no finished cells", file=sys.stderr)
        return 2
    backends = {c.provenance.backend for c in cells}
    backend = backends.pop() if len(backends) == 1 else "genft-hf"
    code = {"CLS_ITEM_S": estimate.CLS_ITEM_S, "CLS_SHOT": estimate.CLS_SHOT["genft-hf"],
            "GEN_ITEM_S": estimate.GEN_ITEM_S, "GEN_SHOT_S": estimate.GEN_SHOT_S,
            "TRAIN_TOKENS_S": estimate.TRAIN_TOKENS_S}
    fitted = {**code, **fit(cells, manifests)}
    if a.train_tokens_s:
        fitted["TRAIN_TOKENS_S"] = a.train_tokens_s
    rows = []
    for family in ("classification", "generation"):
        sub = [c for c in cells if get_task(c.task).is_classification == (family == "classification")]
        if not sub:
            continue
        measured = sum(c.wall_s for c in sub)
        for name, k in (("in the code", code), ("fitted", fitted)):
            est = sum(predict(c, k, backend) for c in sub)
            ratio = statistics.median(c.wall_s / predict(c, k, backend) for c in sub)
            rows.append(f"| {family} | {len(sub)} | {name} | {est / 60:.1f} | {measured / 60:.1f} | {ratio:.2f} |")
    tr = [(m.training.trained_tokens, m.training.wall_time_s) for m in manifests.values() if m.training.wall_time_s]
    times = sorted(_utc(c.provenance.time, f"cell {c.key}: provenance.time") for c in cells)
    span = f"{times[0]:%Y-%m-%d %H:%M} to {times[-1]:%H:%M} UTC" if times[0].date() == times[-1].date() \
        else f"{times[0]:%Y-%m-%d %H:%M} to {times[-1]:%Y-%m-%d %H:%M} UTC"
    consts = "\n".join(f"| {k} | {code[k]:.4g} | {fitted[k]:.4g} |" for k in code)
    command = " ".join(["python benchmarks/time_model.py", a.output]
                       + ([f"--since {a.since}"] if a.since else [])
                       + ([f"--train-tokens-s {a.train_tokens_s:g}"] if a.train_tokens_s else [])
                       + ([f"--out {a.out}"] if a.out else []))
    text = "\n".join([
        "## The suites' time model (genft.suite.estimate), recalibrated",
        "",
        f"`{command}`: {len(cells)} finished cells ({backend}; finished {span}) and "
        f"{len(tr)} fine-tunes ({sum(t for t, _ in tr)} tokens in {sum(w for _, w in tr) / 60:.1f} min) of that "
        "suite's output folder, fitted by least squares to estimate.py's model (classification: n x CLS_ITEM_S x "
        "(1 + CLS_SHOT x shots) x labels/2; generation: n x (GEN_ITEM_S + GEN_SHOT_S x shots); training: tokens / "
        "TRAIN_TOKENS_S, " + ("as measured elsewhere (--train-tokens-s)" if a.train_tokens_s
                              else "the median of the runs' tokens/s") + ").",
        "",
        "| constant | in the code | fitted |",
        "|---|---|---|",
        consts,
        "",
        "| cells | count | model | estimated min | measured min | median measured / estimated per cell |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if a.out:
        write_section(a.out, "time_model", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
