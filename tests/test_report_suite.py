"""The report on what a real suite run wrote (the `tiny_suite` fixture: finetune/sft.py, two seeds, the genft-hf
backend, the real store), and the committed evidence files rebuilding their committed reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from report_records import record

from genft import report
from genft import suite as gsuite
from genft.cli import main
from genft.report import build, write_report
from genft.training import training_facts
from genft.suite import store

REPO = Path(__file__).resolve().parents[1]
FT = "FT builtin_products@16 lora ×2 seeds"


@pytest.fixture(scope="module")
def written(tiny_suite):
    """(records, manifests) as the suite's output folder holds them."""
    output = gsuite.output_of(tiny_suite)
    records, index = store.load_finished(output)
    assert len(records) == len(index["cells"]) == 17  # 5 base cells, 6 per seed (cross-task at Prompt-1 and -2)
    return records, store.load_manifests(output)


@pytest.fixture(scope="module")
def md(written) -> str:
    records, manifests = written
    return build("tiny-suite", records, {run: training_facts(m) for run, m in manifests.items()}, figures_=False)[0]


def rows(md: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after a heading line, as {column: cell} rows."""
    lines = md.splitlines()
    table = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif table:
            break
    return [dict(zip(table[0], r)) for r in table[2:]]


def _seed(r) -> str:
    return str(r.finetune.seed) if r.finetune else "—"


def _label(r) -> str:
    return FT if r.finetune else "tiny"


def test_every_cell_the_run_wrote_is_in_the_appendix_with_its_numbers(written, md):
    records, _ = written
    table = {(row["model"], row["FT seed"], row["test set"], row["prompt"], row["shots"]): row
             for row in rows(md, "## Appendix: every cell")}
    assert len(table) == len(records)
    for r in records:
        row = table[(_label(r), _seed(r), f"{r.task}/{r.dataset}", f"P{r.prompt}", str(r.shots))]
        assert row["n"] == str(r.n) == str(len(r.doc_ids)) and row["domain"] == r.domain
        for metric in ("acc_first", "acc", "rougeL"):
            want = f"{r.metrics[metric]:.3f}" if metric in r.metrics else "—"
            assert row[metric] == want, (r.model, r.dataset, r.shots, metric)


def test_the_settings_average_the_seeds_against_the_base_at_the_same_shots(written, md):
    """Setting 1 / 2 cells: the base model's score; the two seeds' mean with its change vs the base (2 seeds)."""
    records, _ = written
    by = {(r.model, r.dataset, r.shots, r.prompt): r for r in records}
    for heading, dataset in (("## Setting 1: same task, in-domain", "builtin_products"),
                             ("## Setting 2: same task, out-of-domain", "builtin_restaurants")):
        section = md[md.index(heading):]
        table = {row["model"]: row for row in rows(section, "### sentiment, Prompt-1")}
        for shots in (0, 1):
            col = f"{dataset} {shots}-shot"
            base = by[("tiny", dataset, shots, 1)].score
            mean = np.mean([by[(f"ft-products-seed{s}", dataset, shots, 1)].score for s in (1, 2)])
            assert table["tiny"][col] == f"{base:.3f}"
            assert table[FT][col].startswith(f"{mean:.3f} ({mean - base:+.3f} [") and "(2 seeds)" in table[FT][col]
    seeds = {(row["test set"], row["shots"], row["prompt"]): row for row in rows(md, "## Seeds")}
    for (ds, shots, prompt), row in seeds.items():
        scores = sorted(by[(f"ft-products-seed{s}", ds.split("/")[1], int(shots), int(prompt[1]))].score
                        for s in (1, 2))
        assert row["replicates"] == "2" and row["FT seeds"] == "1, 2" and row["min–max"] == \
            f"{scores[0]:.3f}–{scores[1]:.3f}"


def test_one_label_cells_are_flagged_from_the_items_the_model_answered(written, md):
    """The ⚠ flag of each classification cell follows its recorded per-item answers (first-token rule):
    one label on >= 90% of the items, at or below the majority rate."""
    records, _ = written
    table = {(row["model"], row["test set"], row["shots"]): row
             for row in rows(md, "## Classification: predicted labels vs accuracy")}
    flagged = 0
    for r in records:
        if "acc_first" not in r.metrics:
            continue
        row = table[(_label(r) + (f" (seed {r.finetune.seed})" if r.finetune else ""), f"{r.task}/{r.dataset}",
                     str(r.shots))]
        shares = {lab: np.mean(r.items[f"predfirst_{lab}"]) for lab in ("positive", "negative")}
        top = max(shares, key=shares.get)
        one_label = shares[top] >= 0.9 and r.score <= r.majority_rate + 1e-12
        assert row["flag"] == (f"⚠ {top} {shares[top]:.0%}" if one_label else ""), (r.model, r.dataset, r.shots)
        assert row["majority"] == f"{r.majority_rate:.3f}"
        flagged += one_label
    assert f"{flagged} of 12 classification cells answer one label" in md


def test_the_training_manifests_reach_the_report(written, md):
    _, manifests = written
    table = {row["run"]: row for row in rows(md, "## Fine-tuned checkpoints: weight deviation and training")}
    assert set(table) == set(manifests) == {"ft-products-seed1", "ft-products-seed2"}
    for run, man in manifests.items():
        assert table[run]["seed"] == str(man.config["seed"]) == str(man.seed)
        assert table[run]["mean \\|Δw\\|"] == f"{man.weight_deviation.mean_abs_diff:.3e}"
        assert table[run]["train wall"] == f"{man.training.wall_time_s:.1f} s"


def test_the_runs_evidence_file_rebuilds_its_report_and_holds_its_records(tiny_suite, written, tmp_path):
    records, manifests = written
    a = write_report(tiny_suite, out_dir=tmp_path / "a")
    evidence = tmp_path / "a" / "tiny-suite" / "cells.jsonl.gz"
    assert main(["report", "--cells", str(evidence), "--out-dir", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 3 and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                                              if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    name, back, runs, _ = report.read_evidence(evidence)
    assert name == "tiny-suite" and a.read_text().startswith("# genft report: tiny-suite\n")
    assert {r.key: r.model_dump(mode="json") for r in back} == {r.key: r.model_dump(mode="json") for r in records}
    assert set(runs) == set(manifests)


def test_hand_built_report_records_have_the_shape_the_suite_writes(written):
    """tests/report_records.py builds the records most report tests use; each of its records has the fields,
    item lists and metrics a real one of the same kind has."""
    records, _ = written
    for real in (next(r for r in records if r.dataset == "builtin_products" and r.finetune and r.shots == 1),
                 next(r for r in records if r.dataset == "builtin_sports" and not r.finetune)):
        n = real.n
        kw = {"correct": [1, 0] * (n // 2)} if "acc_first" in real.metrics else {"rouge": [0.5] * n}
        built = record(real.task, real.dataset, real.domain, shots=real.shots, demo_targets=real.demo_targets, **kw)
        assert set(built.items) == set(real.items) and set(built.metrics) == set(real.metrics), real.task
        assert all(len(v) == n for v in built.items.values()) and len(built.outputs) == n == len(built.doc_ids)
        assert (built.majority_rate is None) == (real.majority_rate is None)
        assert set(built.model_dump()) == set(real.model_dump())


@pytest.mark.parametrize("evidence", sorted(p.relative_to(REPO).as_posix()
                                            for p in (REPO / "reports").glob("*/cells.jsonl.gz")))
def test_each_committed_evidence_file_rebuilds_its_committed_report(evidence, tmp_path):
    """`genft report --cells reports/<suite>/cells.jsonl.gz` on a fresh clone: the committed markdown and every
    committed figure, byte for byte."""
    suite = Path(evidence).parent.name
    assert main(["report", "--cells", str(REPO / evidence), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / f"{suite}.md").read_bytes() == (REPO / "reports" / f"{suite}.md").read_bytes()
    committed = sorted(p.name for p in (REPO / "reports" / suite).iterdir())
    assert sorted(p.name for p in (tmp_path / suite).iterdir()) == committed
    for name in committed:
        assert (tmp_path / suite / name).read_bytes() == (REPO / "reports" / suite / name).read_bytes(), name


def test_there_is_a_committed_evidence_file():
    assert list((REPO / "reports").glob("*/cells.jsonl.gz")), "no reports/*/cells.jsonl.gz to check"
