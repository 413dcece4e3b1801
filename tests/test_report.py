"""The suite report from cell records written and read by the real store (no models): tables, intervals,
seeds, writing, loading."""
from __future__ import annotations

import numpy as np
import pytest
from manifests import fake_manifest
from report_records import BASE, ft, ok, record, roundtrip, stored

from genft import report
from genft.cli import main
from genft.prompts import TASKS
from genft.report import build, paired_bootstrap, write_report
from genft.report import write as report_write
from genft.report.stats import Arm, resampled_means, seed_interval
from genft.suite.store import StoreError


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


# ---------------------------------------------------------------- bootstrap


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
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert lo < diff < hi
    assert paired_bootstrap(a, b, n_resamples=1000, seed=7) == (diff, lo, hi)  # deterministic
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_seed_interval_is_mean_plus_minus_t_sd_over_root_n():
    agg = seed_interval([0.6, 0.8])
    half = 12.706 * np.std([0.6, 0.8], ddof=1) / np.sqrt(2)
    assert agg["mean"] == pytest.approx(0.7)
    assert (agg["lo"], agg["hi"]) == (pytest.approx(0.7 - half, abs=1e-4), pytest.approx(0.7 + half, abs=1e-4))
    assert (agg["min"], agg["max"]) == (0.6, 0.8)


# ---------------------------------------------------------------- tables


def small_suite():
    """Sentiment: base 5/10 at 0-shot, 6/10 at 2-shot; FT@2000 9/10 and 8/10; a cross-task summary cell."""
    f2k = ft("sentiment", "builtin_products", 2000)
    f4k = ft("sentiment", "builtin_products", 4000)
    return [
        record("sentiment", "builtin_products", "in", None, shots=0, correct=ok(10, 5)),
        record("sentiment", "builtin_products", "in", None, shots=2, correct=ok(10, 6)),
        record("sentiment", "builtin_products", "in", f2k, shots=0, correct=ok(10, 9)),
        record("sentiment", "builtin_products", "in", f2k, shots=2, correct=ok(10, 8)),
        record("sentiment", "builtin_products", "in", f4k, shots=0, correct=ok(10, 5)),
        record("sentiment", "builtin_restaurants", "out", None, shots=0, correct=ok(10, 7)),
        record("sentiment", "builtin_restaurants", "out", f2k, shots=0, correct=ok(10, 7),
               full_preds=["negative"] * 10),
        record("summary", "builtin_sports", "in", None, rouge=[0.4, 0.2, 0.3, 0.5]),
        record("summary", "builtin_sports", "in", f2k, rouge=[0.0, 0.1, 0.0, 0.1]),
    ]


def test_setting_tables_put_known_numbers_in_the_right_cells(tmp_path):
    md, figs = build("synth", roundtrip(tmp_path, small_suite()), figures_=False)
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
    assert at(s1, h1, "FT builtin_products@4000", "builtin_products 2-shot") == "—"  # missing: a dash
    # Setting 2: the same first-token answers on every item: degenerate, marked ≡, no ▲/▼
    s2 = section(md, "## Setting 2")
    assert at(s2, h1, "FT builtin_products@2000", "builtin_restaurants 0-shot") == "0.700 (+0.000 [+0.000, +0.000] ≡)"
    s3 = section(md, "## Setting 3")
    assert at(s3, "### Prompt-1, 0-shot", BASE, "summary/builtin_sports") == "0.350"
    assert at(s3, "### Prompt-1, 0-shot", "FT builtin_products@2000", "summary/builtin_sports").startswith(
        "0.050 (-0.300 [")
    app = section(md, "## Appendix")
    assert "| FT builtin_products@2000 | 42 | sentiment/builtin_restaurants | out | P1 | 0 | — | 10 | 0.700 | 0.500 |" \
        in " ".join(app.split())
    labels = section(md, "## Classification")
    assert "positive 0.50, negative 0.50" in labels and "negative 1.00" in labels
    assert "0 of 7 classification cells answer one label" in labels  # first-token rule: no cell is one-label


def test_best_over_shots_is_labelled_as_selected_on_the_test_set(tmp_path):
    md, _ = build("synth", roundtrip(tmp_path, small_suite()), figures_=False)
    best = section(md, "## Best over shots (selected on the test set)")
    assert "chosen on the test set" in best
    assert at(best, "### sentiment test sets", BASE, "builtin_products") == "0.600 (k=2)"
    assert at(best, "### sentiment test sets", "FT builtin_products@2000", "builtin_products") == "0.900 (k=0)"


def test_replicates_are_seeds_of_one_recipe_and_intervals_resample_them(tmp_path):
    s42, s7 = ft("sentiment", "builtin_products", seed=42), ft("sentiment", "builtin_products", seed=7)
    other = ft("sentiment", "builtin_products", seed=42, lr=1e-4)  # same visible settings, another recipe
    recs = [record("sentiment", "builtin_products", "in", None, correct=ok(10, 5)),
            record("sentiment", "builtin_products", "in", s42, correct=ok(10, 6)),
            record("sentiment", "builtin_products", "in", s7, correct=ok(10, 8)),
            record("sentiment", "builtin_products", "in", other, correct=ok(10, 2))]
    md, _ = build("synth", roundtrip(tmp_path, recs), figures_=False)
    models = table(section(md, "### Models"), "### Models")[1]
    label = "FT builtin_products@2000 ×2 seeds [sentiment-builtin_products-2000]"
    assert models[label][6:8] == ["7, 42", "sentiment-builtin_products-2000-s42, sentiment-builtin_products-2000-s7"]
    # the other recipe is its own group, labelled by its name, never averaged with the seeds
    assert "FT builtin_products@2000 [sentiment-builtin_products-2000-lr0.0001]" in models
    cell = at(section(md, "## Setting 1"), "### sentiment, Prompt-1", label, "builtin_products 0-shot")
    assert cell.startswith("0.700 (+0.200 [") and "(2 seeds)" in cell
    seeds = section(md, "## Seeds")
    half = 12.706 * np.std([0.6, 0.8], ddof=1) / np.sqrt(2)
    assert table(seeds, "## Seeds")[1][label][5:] == ["2", "7, 42", "acc_first", "0.700",
                                                       f"[{0.7 - half:.3f}, {0.7 + half:.3f}]", "0.600–0.800"]


def test_conditions_are_keyed_on_the_demonstrations(tmp_path):
    """First-k demos and random demos with a seed are different conditions, compared like with like."""
    f = ft("sentiment", "builtin_products")
    recs = [record("sentiment", "builtin_products", "in", None, shots=2, correct=ok(20, 10)),
            record("sentiment", "builtin_products", "in", None, shots=2, demo_seed=1, correct=ok(20, 4)),
            record("sentiment", "builtin_products", "in", f, shots=2, correct=ok(20, 12)),
            record("sentiment", "builtin_products", "in", f, shots=2, demo_seed=1, correct=ok(20, 16))]
    md, _ = build("synth", roundtrip(tmp_path, recs), figures_=False)
    s1 = section(md, "## Setting 1")
    h = "### sentiment, Prompt-1"
    assert at(s1, h, BASE, "builtin_products 2-shot") == "0.500"
    assert at(s1, h, BASE, "builtin_products 2-shot (demo seed 1)") == "0.200"
    assert at(s1, h, "FT builtin_products@2000", "builtin_products 2-shot").startswith("0.600 (+0.100 [")
    assert at(s1, h, "FT builtin_products@2000", "builtin_products 2-shot (demo seed 1)").startswith("0.800 (+0.600 [")
    assert "Seeds" in md and "every condition has one replicate" in section(md, "## Seeds")


# ---------------------------------------------------------------- writing and loading


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
                    cells.append(record(task, ds, dom, m, shots=k, rouge=list(rng.random(12))))
                else:
                    cells.append(record(task, ds, dom, m, shots=k, correct=list(rng.integers(0, 2, 12))))
    return cells


MANIFESTS = {"sentiment-builtin_products-100-s42": fake_manifest(wall_time_s=60.0, tokens_per_s=10.0,
                                                                  truncation={"examples_demos_cut": 2})}


def test_write_report_is_deterministic_with_figures(tmp_path):
    cells = roundtrip(tmp_path, full_suite())
    a = write_report("synth", cells, MANIFESTS, out_dir=tmp_path / "a")
    b = write_report("synth", list(reversed(cells)), MANIFESTS, out_dir=tmp_path / "b")
    assert a == tmp_path / "a" / "synth.md"
    assert a.read_text() == b.read_text()
    files = sorted(p.name for p in (tmp_path / "a" / "synth").iterdir())
    assert {"heatmap-p1-0shot.png", "shots-sentiment.png", "shots-summary.png", "train-size.png",
            "cells.jsonl.gz"} <= set(files)
    for name in files:
        assert (tmp_path / "a" / "synth" / name).read_bytes() == (tmp_path / "b" / "synth" / name).read_bytes()
    text = a.read_text()
    for name in files:
        if name.endswith(".png"):
            assert f"](synth/{name})" in text
    assert "| wall time: fine-tuning | 60.0 s (sum over 1 of 4 runs with a manifest)" in " ".join(text.split())
    assert "examples_demos_cut 2" in text
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_is_atomic(tmp_path, monkeypatch):
    cells = roundtrip(tmp_path, small_suite())
    out = write_report("synth", cells, out_dir=tmp_path / "r")
    before = out.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(report_write.sections, "section_appendix", boom)  # a failure while building
    with pytest.raises(RuntimeError):
        write_report("synth", cells[:4], out_dir=tmp_path / "r")
    assert out.read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setattr("genft.files.os.replace", boom)  # a failure while writing
    with pytest.raises(RuntimeError):
        write_report("synth", cells[:4], out_dir=tmp_path / "r")
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["synth", "synth.md"]
    assert not list(tmp_path.rglob("*.tmp"))
    monkeypatch.setattr("genft.files.os.replace", boom)
    with pytest.raises(RuntimeError):
        write_report("other", cells, out_dir=tmp_path / "new")
    monkeypatch.undo()
    assert not (tmp_path / "new" / "other.md").exists() and not list((tmp_path / "new").rglob("*.tmp"))


def test_report_reads_the_suite_output_folder_and_the_cli_writes_the_same(tmp_path):
    output = stored(tmp_path / "runs" / "synth", small_suite(), MANIFESTS)
    out = write_report(output, out_dir=tmp_path / "a")
    assert out == tmp_path / "a" / "synth.md" and out.read_text().startswith("# genft report: synth\n")
    assert main(["report", str(output), "--out-dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "synth.md").read_bytes() == out.read_bytes()


def test_a_corrupt_record_is_an_error_naming_the_file(tmp_path, capsys):
    recs = small_suite()
    output = stored(tmp_path / "runs" / "synth", recs)
    bad = output / "cells" / f"{recs[0].key}.json"
    bad.write_text(bad.read_text().replace('"n": 10', '"n": 11'))
    with pytest.raises(StoreError, match=recs[0].key):
        write_report(output, out_dir=tmp_path / "r")
    assert main(["report", str(output), "--out-dir", str(tmp_path / "r")]) == 2
    assert recs[0].key in capsys.readouterr().err


def test_the_report_reads_typed_records_only(tmp_path):
    rec = small_suite()[0]
    with pytest.raises(TypeError, match="CellRecord"):
        build("synth", [rec.model_dump(mode="json")], figures_=False)


def test_hierarchical_resampling_draws_seeds_then_items():
    vals = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    m = resampled_means([Arm(vals, "g")], n_resamples=500, seed=3)
    rng = np.random.default_rng(3)
    items = rng.integers(0, 4, size=(500, 4))
    seeds = rng.integers(0, 2, size=(500, 2))
    want = np.array([vals[seeds[r]].mean(axis=0)[items[r]].mean() for r in range(500)])
    assert m[:, 0] == pytest.approx(want)


def test_the_evidence_file_rebuilds_the_same_report_byte_for_byte(tmp_path):
    output = stored(tmp_path / "runs" / "synth", full_suite(), MANIFESTS)
    settings = report.ReportSettings(one_label_share=0.8, n_resamples=500)
    a = write_report(output, out_dir=tmp_path / "a", settings=settings)
    evidence = tmp_path / "a" / "synth" / "cells.jsonl.gz"
    assert main(["report", "--cells", str(evidence), "--out-dir", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert "500 resamples" in a.read_text() and "≥ 80% of the items" in a.read_text()  # settings travel too
    name, recs, runs, stored_settings = report.read_evidence(evidence)
    assert (name, len(recs), stored_settings) == ("synth", len(full_suite()), settings)
    assert runs == {"sentiment-builtin_products-100-s42": {
        "training": {"wall_time_s": 60.0, "tokens_per_s": 10.0, "global_steps": 1},
        "truncation": {"examples_demos_cut": 2, "demos_dropped": 0, "examples_input_cut": 0, "input_chars_cut": 0}}}
    assert evidence.stat().st_size < 20_000


def test_a_bad_evidence_line_is_an_error_naming_file_and_line(tmp_path, capsys):
    import gzip

    write_report("synth", roundtrip(tmp_path, small_suite()), out_dir=tmp_path / "a")
    evidence = tmp_path / "a" / "synth" / "cells.jsonl.gz"
    lines = gzip.decompress(evidence.read_bytes()).decode().splitlines()
    lines[2] = lines[2].replace('"n":10', '"n":9')
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(StoreError, match=rf"{bad}:3: not a valid cell record"):
        report.read_evidence(bad)
    assert main(["report", "--cells", str(bad), "--out-dir", str(tmp_path / "b")]) == 2
    assert f"{bad}:3:" in capsys.readouterr().err
    assert main(["report", "--out-dir", str(tmp_path / "b")]) == 2  # neither a suite nor --cells


def test_generations_that_copy_a_demonstration_are_counted(tmp_path):
    """The share of generations that are, word for word, a demonstration's target (the PeerRead 1-shot
    failure: the model repeats the demo's title for every document)."""
    demo = "Arsenal beat Chelsea 2-1."
    outs = [demo, "Rain in the north.", f" {demo} ", "A draw in Leeds."]
    recs = [record("summary", "builtin_sports", "in", shots=1, rouge=[0.1, 0.2, 0.3, 0.4], outputs=outs,
                   demo_targets=[demo]),
            record("summary", "builtin_sports", "in", shots=0, rouge=[0.1, 0.2, 0.3, 0.4], outputs=outs)]
    md, _ = build("synth", roundtrip(tmp_path, recs), figures_=False)
    header, _ = table(section(md, "## Generation"), "## Generation: repeated, empty, copied and identical outputs")
    rows = [[c.strip() for c in ln.strip().strip("|").split(" | ")]
            for ln in section(md, "## Generation").splitlines() if ln.startswith(f"| {BASE} ")]
    by_shots = {r[header.index("shots")]: r[header.index("copies a demo")] for r in rows}
    assert by_shots == {"1": "0.50", "0": "—"}  # " Arsenal ... " counts (stripped); 0 shots: nothing to copy
