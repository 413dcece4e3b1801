"""The suite report from synthetic cell records (no models): tables, intervals, findings, seeds, writing."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from genft import report
from genft.prompts import TASKS
from genft.report import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_MEASURED, SuiteData, build, paired_bootstrap,
                          write_report)

BASE = "tiny-base"


# ---------------------------------------------------------------- synthetic records (the suite's contract)


def ft(task, dataset, size=2000, icl=0, seed=42, method="full", wd=1e-4, demos="fixed"):
    run = f"{task}-{dataset}-{size}" + (f"-icl{icl}" if icl else "") + f"-s{seed}"
    return {"run": run, "task": task, "dataset": dataset, "train_size": size, "train_limit": None, "method": method,
            "icl_shots": icl, "icl_demos": demos, "seed": seed, "weight_deviation": wd}


def cell(task, dataset, domain, finetune=None, prompt=1, shots=0, demo_seed=None, correct=None, preds=None,
         gold=None, full_preds=None, rouge=None, suite="synth"):
    """One record.  Classification: `correct` (0/1 per item) or explicit gold/preds; generation: `rouge`."""
    spec = TASKS[task]
    model = finetune["run"] if finetune else BASE
    if spec.kind == "classification":
        labels = spec.labels
        if gold is None:
            gold = [labels[i % len(labels)] for i in range(len(correct))]
            preds = [g if c else labels[(labels.index(g) + 1) % len(labels)] for g, c in zip(gold, correct)]
        full_preds = full_preds or preds
        items = {"acc_first": [float(p == g) for p, g in zip(preds, gold)],
                 "acc": [float(p == g) for p, g in zip(full_preds, gold)]}
        items["acc_norm"] = list(items["acc"])
        for lab in labels:
            items[f"pred_{lab}"] = [float(p == lab) for p in full_preds]
            items[f"predfirst_{lab}"] = [float(p == lab) for p in preds]
            items[f"gold_{lab}"] = [float(g == lab) for g in gold]
        majority = max(gold.count(lab) for lab in labels) / len(gold)
    else:
        items = {"rouge1": list(rouge), "rouge2": list(rouge), "rougeL": list(rouge)}
        majority = None
    n = len(next(iter(items.values())))
    return {"key": f"{suite}|{model}|{task}|{dataset}|p{prompt}|k{shots}|d{demo_seed}", "suite": suite,
            "model": model, "checkpoint": f"/ckpt/{model}", "base": BASE, "finetune": finetune, "task": task,
            "dataset": dataset, "domain": domain, "prompt": prompt, "shots": shots, "limit": None,
            "demo_seed": demo_seed, "n": n, "metrics": {k: float(np.mean(v)) for k, v in items.items()},
            "items": items, "majority_rate": majority, "wall_s": 2.0,
            "provenance": {"genft": "0.1.0", "lm_eval": "0.4.13", "torch": "2.13.0", "transformers": "5.24.0",
                           "backend": "hf", "batch_size": 8, "data_sha256": f"sha-{dataset}", "harness_hash": "h1",
                           "device": "cpu", "hostname": "box", "time": "2025-01-01T00:00:00"}}


def ok(n, k):
    """n items, the first k correct."""
    return [1] * k + [0] * (n - k)


def table(md: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """The first markdown table after a heading line: (header cells, {first cell: row cells})."""
    lines = md.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    header, body = rows[0], rows[2:]
    return header, {r[0]: r for r in body}


def at(md, heading, row, col):
    header, rows = table(md, heading)
    return rows[row][header.index(col)]


def section(md: str, title: str) -> str:
    start = md.index(title)
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_identical_items_give_zero_interval():
    a = [1, 0, 1, 1, 0, 0.5]
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)


def test_bootstrap_constant_difference_gives_that_difference():
    assert paired_bootstrap([1.0] * 50, [0.0] * 50) == (1.0, 1.0, 1.0)


def test_bootstrap_matches_a_direct_numpy_computation():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 1], dtype=float)
    b = np.array([0, 0, 1, 0, 0, 1, 1, 0], dtype=float)
    diff, lo, hi = paired_bootstrap(a, b, n_resamples=1000, seed=7)
    assert diff == pytest.approx(0.25)  # (1 + 1 - 1 + 1) / 8
    idx = np.random.default_rng(7).integers(0, 8, size=(1000, 8))
    means = (a - b)[idx].mean(axis=1)
    assert (lo, hi) == tuple(np.quantile(means, [0.025, 0.975]))
    assert lo < diff < hi
    # the same seed gives the same interval: the report is deterministic
    assert paired_bootstrap(a, b, n_resamples=1000, seed=7) == (diff, lo, hi)
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_seed_interval_is_mean_plus_minus_t_sd_over_root_n():
    agg = report.seed_interval([0.6, 0.8])
    half = 12.706 * np.std([0.6, 0.8], ddof=1) / np.sqrt(2)
    assert agg["mean"] == pytest.approx(0.7)
    assert (agg["lo"], agg["hi"]) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    assert (agg["min"], agg["max"]) == (0.6, 0.8)


# ---------------------------------------------------------------- tables


def small_suite():
    """Sentiment: base 5/10 at 0-shot, 6/10 at 2-shot; FT@2000 9/10 and 8/10; a cross-task summary cell."""
    f2k = ft("sentiment", "builtin_products", 2000)
    f4k = ft("sentiment", "builtin_products", 4000)
    return [
        cell("sentiment", "builtin_products", "in", None, shots=0, correct=ok(10, 5)),
        cell("sentiment", "builtin_products", "in", None, shots=2, correct=ok(10, 6)),
        cell("sentiment", "builtin_products", "in", f2k, shots=0, correct=ok(10, 9)),
        cell("sentiment", "builtin_products", "in", f2k, shots=2, correct=ok(10, 8)),
        cell("sentiment", "builtin_products", "in", f4k, shots=0, correct=ok(10, 5)),
        cell("sentiment", "builtin_restaurants", "out", None, shots=0, correct=ok(10, 7)),
        cell("sentiment", "builtin_restaurants", "out", f2k, shots=0, correct=ok(10, 7),
             full_preds=["negative"] * 10),
        cell("summary", "builtin_sports", "in", None, rouge=[0.4, 0.2, 0.3, 0.5]),
        cell("summary", "builtin_sports", "in", f2k, rouge=[0.0, 0.1, 0.0, 0.1]),
    ]


def test_setting_tables_put_known_numbers_in_the_right_cells():
    md, figs = build("synth", small_suite(), figures=False)
    assert figs == {}
    h1 = "### sentiment, Prompt-1"
    s1 = section(md, "## Setting 1")
    assert at(s1, h1, BASE, "builtin_products 0-shot") == "0.500"
    assert at(s1, h1, BASE, "builtin_products 2-shot") == "0.600"
    _, lo, hi = paired_bootstrap(ok(10, 9), ok(10, 5))
    assert lo > 0
    assert at(s1, h1, "FT builtin_products@2000", "builtin_products 0-shot") == \
        f"0.900 (+0.400 [{lo:+.3f}, {hi:+.3f}] ▲)"
    _, lo, hi = paired_bootstrap(ok(10, 8), ok(10, 6))
    assert at(s1, h1, "FT builtin_products@2000", "builtin_products 2-shot") == \
        f"0.800 (+0.200 [{lo:+.3f}, {hi:+.3f}]{' ▲' if lo > 0 else ''})"
    # a missing cell is a dash, not a number
    assert at(s1, h1, "FT builtin_products@4000", "builtin_products 2-shot") == "—"
    # Setting 2: identical items -> +0.000 [+0.000, +0.000], no mark
    s2 = section(md, "## Setting 2")
    assert at(s2, h1, "FT builtin_products@2000", "builtin_restaurants 0-shot") == \
        "0.700 (+0.000 [+0.000, +0.000])"
    # Setting 3: the sentiment model on summary, change vs the base's 0.350
    s3 = section(md, "## Setting 3")
    assert at(s3, "### Prompt-1, 0-shot", BASE, "summary/builtin_sports") == "0.350"
    assert at(s3, "### Prompt-1, 0-shot", "FT builtin_products@2000", "summary/builtin_sports").startswith(
        "0.050 (-0.300 [")
    # the appendix shows the full-label rule next to the first-token rule
    app = section(md, "## Appendix")
    assert "| FT builtin_products@2000 | 42 | sentiment/builtin_restaurants | out | P1 | 0 | — | 10 | 0.700 | 0.500 |" \
        in " ".join(app.split())
    # predicted labels next to accuracy; the full-label rule's "negative" for all items is flagged
    labels = section(md, "## Classification")
    assert "positive 0.50, negative 0.50" in labels and "⚠ negative 100%" in labels
    assert "0 of" not in labels.splitlines()[4]


def test_best_over_shots_is_labelled_as_selected_on_the_test_set():
    md, _ = build("synth", small_suite(), figures=False)
    best = section(md, "## Best over shots (selected on the test set)")
    assert "chosen on the test set" in best
    assert at(best, "### sentiment test sets", BASE, "builtin_products") == "0.600 (k=2)"
    assert at(best, "### sentiment test sets", "FT builtin_products@2000", "builtin_products") == "0.900 (k=0)"


def test_seeds_are_aggregated_and_replicates_averaged():
    s42, s7 = ft("sentiment", "builtin_products", seed=42), ft("sentiment", "builtin_products", seed=7)
    cells = [cell("sentiment", "builtin_products", "in", None, correct=ok(10, 5)),
             cell("sentiment", "builtin_products", "in", s42, correct=ok(10, 6)),
             cell("sentiment", "builtin_products", "in", s7, correct=ok(10, 8))]
    for d, k in [(1, 4), (2, 6), (3, 8)]:
        cells.append(cell("sentiment", "builtin_products", "in", None, shots=2, demo_seed=d, correct=ok(10, k)))
    md, _ = build("synth", cells, figures=False)
    label = "FT builtin_products@2000 ×2 seeds"
    # the tables show the replicate mean; the interval pairs the per-item means with the base's items
    _, lo, hi = paired_bootstrap([1] * 6 + [0.5] * 2 + [0] * 2, ok(10, 5))
    assert at(section(md, "## Setting 1"), "### sentiment, Prompt-1", label, "builtin_products 0-shot") == \
        f"0.700 (+0.200 [{lo:+.3f}, {hi:+.3f}]{' ▲' if lo > 0 else ''})"
    seeds = section(md, "## Seeds")
    assert "mean ± t(0.975, n−1)·sd/√n" in seeds
    half = 12.706 * np.std([0.6, 0.8], ddof=1) / np.sqrt(2)
    row = table(seeds, "## Seeds")[1][label]
    assert row[4:] == ["2", "42, 7", "—", "acc_first", "0.700", f"[{0.7 - half:.3f}, {0.7 + half:.3f}]",
                       "0.600–0.800"]
    row = table(seeds, "## Seeds")[1][BASE]
    half = 4.303 * np.std([0.4, 0.6, 0.8], ddof=1) / np.sqrt(3)
    assert row[3:] == ["2", "3", "—", "1, 2, 3", "acc_first", "0.600", f"[{0.6 - half:.3f}, {0.6 + half:.3f}]",
                       "0.400–0.800"]


# ---------------------------------------------------------------- findings


def in_domain_cells(ft_correct, n, base_correct=(50, 60)):
    f = ft("paraphrase", "builtin_people")
    return [cell("paraphrase", "builtin_people", "in", None, shots=0, correct=ok(n, base_correct[0] * n // 100)),
            cell("paraphrase", "builtin_people", "in", None, shots=2, correct=ok(n, base_correct[1] * n // 100)),
            cell("paraphrase", "builtin_people", "in", f, shots=0, correct=ok(n, ft_correct * n // 100))]


def test_finding_in_domain_holds_does_not_hold_inconclusive_not_measured():
    f1 = report.finding_in_domain
    assert f1(SuiteData("s", in_domain_cells(90, 200))).verdict == HOLDS  # 0.90 vs best base 0.60
    assert f1(SuiteData("s", in_domain_cells(30, 200))).verdict == DOES_NOT_HOLD  # 0.30 vs 0.60
    # 4 items: 0.75 vs 0.50, the interval includes zero and is wider than the parity margin
    got = f1(SuiteData("s", in_domain_cells(75, 4))).verdict
    assert got.startswith(INCONCLUSIVE) and "interval too wide" in got
    # no base cell with demonstrations: the comparison cannot be made
    no_demos = [c for c in in_domain_cells(90, 200) if not (c["finetune"] is None and c["shots"] > 0)]
    assert f1(SuiteData("s", no_demos)).verdict == NOT_MEASURED
    # the best base shot count is the one compared (0.60 at 2-shot), stated in the row
    f = f1(SuiteData("s", in_domain_cells(90, 200)))
    assert f.rows[0][2] == "FT 0-shot − base best 2-shot" and f.rows[0][3:5] == ["0.900", "0.600"]


def test_finding_training_size_and_weight_deviation():
    cells = [cell("paraphrase", "builtin_people", "in", None, correct=ok(200, 100))]
    for size, k in [(2000, 160), (4000, 186), (6000, 184)]:
        cells.append(cell("paraphrase", "builtin_people", "in", ft("paraphrase", "builtin_people", size),
                          correct=ok(200, k)))
    f = report.finding_train_size(SuiteData("s", cells))
    assert f.verdict == HOLDS  # 2K -> 4K up, 4K -> 6K flat: more is not reliably better
    assert [r[-1] for r in f.rows] == ["up", "flat"]
    f = report.finding_train_size(SuiteData("s", cells[:3]))
    assert f.verdict == DOES_NOT_HOLD  # the only step is a clear improvement

    plain, icl = ft("summary", "builtin_sports", wd=1.0e-4), ft("summary", "builtin_sports", icl=1, wd=8.0e-5)
    cells = [cell("summary", "builtin_sports", "in", m, rouge=[0.3, 0.4]) for m in (None, plain, icl)]
    f = report.finding_weight_deviation(SuiteData("s", cells))
    assert f.verdict == HOLDS and f.rows[0][2:5] == ["8.000e-05", "1.000e-04", "0.800"]
    icl["weight_deviation"] = 2e-4
    cells = [cell("summary", "builtin_sports", "in", m, rouge=[0.3, 0.4]) for m in (None, plain, icl)]
    assert report.finding_weight_deviation(SuiteData("s", cells)).verdict == DOES_NOT_HOLD


def test_finding_cross_task_parts():
    f = ft("sentiment", "builtin_products")
    n = 100
    cells = [cell("summary", "builtin_sports", "in", None, prompt=p, rouge=[0.3] * n) for p in (1, 2)]
    cells += [cell("summary", "builtin_sports", "in", f, prompt=1, rouge=[0.0] * n),
              cell("summary", "builtin_sports", "in", f, prompt=2, rouge=[0.15] * n)]
    got = report.finding_cross_task(SuiteData("s", cells))
    verdicts = [v for _, v, _ in got.parts]
    assert verdicts == [HOLDS, HOLDS, NOT_MEASURED]  # no generation-tuned model on classification
    assert got.verdict.startswith(INCONCLUSIVE) and "cells missing: part c" in got.verdict


def test_missing_cells_say_not_measured():
    cells = [cell("sentiment", "builtin_products", "in", None, correct=ok(10, 5))]
    md, _ = build("synth", cells, figures=False)
    for f in report.findings(SuiteData("s", cells)):
        assert f.verdict == NOT_MEASURED
    summary = table(md, "## Findings of the study vs this suite")[1]
    assert all(summary[str(i)][2] == NOT_MEASURED for i in range(1, 7))
    for title in ("## Setting 3", "## FTICL", "## Seeds"):
        assert "Not measured in this suite" in section(md, title)


# ---------------------------------------------------------------- writing


def full_suite():
    rng = np.random.default_rng(3)
    cells = []
    models = [None, ft("sentiment", "builtin_products", 100), ft("sentiment", "builtin_products", 200),
              ft("summary", "builtin_sports", 100), ft("summary", "builtin_sports", 100, icl=1, wd=5e-5)]
    for m in models:
        for task, ds, dom, shots in [("sentiment", "builtin_products", "in", (0, 2)),
                                     ("sentiment", "builtin_restaurants", "out", (0, 2)),
                                     ("summary", "builtin_sports", "in", (0, 1))]:
            for k in shots:
                if TASKS[task].kind == "generation":
                    cells.append(cell(task, ds, dom, m, shots=k, rouge=list(rng.random(12))))
                else:
                    cells.append(cell(task, ds, dom, m, shots=k, correct=list(rng.integers(0, 2, 12))))
    return cells


def test_write_report_is_deterministic_with_figures(tmp_path):
    cells = full_suite()
    manifests = {"sentiment-builtin_products-100-s42": {"training": {"wall_time_s": 60.0, "tokens_per_s": 10.0},
                                                        "truncation": {"examples_demos_cut": 2}}}
    a = write_report("synth", cells, manifests, out_dir=tmp_path / "a")
    b = write_report("synth", list(reversed(cells)), manifests, out_dir=tmp_path / "b")
    assert a == tmp_path / "a" / "synth.md"
    assert a.read_text() == b.read_text()
    pngs = sorted(p.name for p in (tmp_path / "a" / "synth").glob("*.png"))
    assert {"heatmap-p1-0shot.png", "shots-sentiment.png", "shots-summary.png", "train-size.png"} <= set(pngs)
    for name in pngs:
        assert (tmp_path / "a" / "synth" / name).read_bytes() == (tmp_path / "b" / "synth" / name).read_bytes()
        assert f"](synth/{name})" in a.read_text()
    text = a.read_text()
    assert "| wall time: fine-tuning | 60.0 s (sum over 1 of 4 runs with a manifest)" in " ".join(text.split())
    assert "examples_demos_cut 2" in text
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_is_atomic(tmp_path, monkeypatch):
    cells = small_suite()
    out = write_report("synth", cells, out_dir=tmp_path)
    before = out.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("boom")

    # a failure while building: nothing is touched
    monkeypatch.setattr(report, "section_appendix", boom)
    with pytest.raises(RuntimeError):
        write_report("synth", cells[:4], out_dir=tmp_path)
    assert out.read_bytes() == before
    monkeypatch.undo()
    # a failure while writing: the old file stays, no partial or temporary file is left
    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(RuntimeError):
        write_report("synth", cells[:4], out_dir=tmp_path)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth", "synth.md"]
    assert not list(tmp_path.rglob("*.tmp"))
    # a first report that fails while writing leaves no file at all
    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(RuntimeError):
        write_report("other", cells, out_dir=tmp_path / "new")
    monkeypatch.undo()
    assert not (tmp_path / "new" / "other.md").exists() and not list((tmp_path / "new").rglob("*.tmp"))


def test_cells_loaded_through_the_suite_module_and_cli(tmp_path, monkeypatch):
    fake = types.ModuleType("genft.suite")
    fake.load_cells = lambda path: small_suite()
    fake.load_manifests = lambda path: {}
    monkeypatch.setitem(sys.modules, "genft.suite", fake)
    out = write_report("suites/synth.yaml", out_dir=tmp_path)
    assert out == tmp_path / "synth.md" and out.read_text().startswith("# genft report: synth\n")
    from genft.cli import main

    assert main(["report", "suites/synth.yaml", "--out-dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "synth.md").read_text() == out.read_text()
    fake.load_cells = lambda path: []
    assert main(["report", "nothing", "--out-dir", str(tmp_path / "cli")]) == 2
