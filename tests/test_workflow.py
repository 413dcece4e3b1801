"""Fitting the researcher's tools: the trainer's curves in their tracker (report_to / run_name, kept out of the
recipe hash), `genft export` of cells and items as tables, evaluation results logged to a tracker."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from genft import data as gdata  # noqa: E402
from genft import training  # noqa: E402
from genft.training import ConfigError, FinetuneConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under logdir, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for run, tags in mux.Runs().items():
        for tag in tags.get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in mux.Scalars(run, tag))
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wf-data")
    items = [{"text": f"{'Great, works well' if i % 2 == 0 else 'Broke at once'} ({i})",
              "label": "positive" if i % 2 == 0 else "negative"} for i in range(16)]
    gdata.write_dataset("sentiment", "amazon", {"train_16": items, "demos": items[:8], "test": items[:4]}, root)
    return root


def _cfg(tiny_model, data_root, out, **kw) -> FinetuneConfig:
    base = dict(task="sentiment", dataset="amazon", train_size=16, data_dir=str(data_root),
                model_name_or_path=tiny_model, output_dir=str(out), max_steps=3, per_device_train_batch_size=4,
                gradient_accumulation_steps=1, learning_rate=1e-3, max_length=128, logging_steps=1, save_steps=100,
                torch_threads=1)
    return FinetuneConfig(**{**base, **kw})


def test_sft_reports_its_loss_curve_to_tensorboard(tiny_model, data_root, tmp_path, monkeypatch):
    """`finetune/sft.py --report_to tensorboard --run_name N` writes the trainer's loss per step where
    TensorBoard reads it; the logging settings are no part of the recipe: the same run without them is the
    finished run (same recipe hash), not a new one."""
    import sys

    sys.path.insert(0, str(REPO / "finetune"))
    import sft

    out = tmp_path / "out"
    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    args = ["--task", "sentiment", "--dataset", "amazon", "--train_size", "16", "--data_dir", str(data_root),
            "--model_name_or_path", tiny_model, "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
            "--max_length", "128", "--torch_threads", "1"]
    assert sft.main(args + ["--report_to", "tensorboard", "--run_name", "amazon-lora"]) == 0
    man = json.loads((out / training.MANIFEST).read_text())
    assert man["config"]["report_to"] == ["tensorboard"] and man["config"]["run_name"] == "amazon-lora"
    curve = sorted(_scalars(logdir)["train/loss"])
    assert [s for s, _ in curve] == [s for s, _ in man["training"]["loss_curve"]] == [1, 2, 3]
    assert [x for _, x in curve] == pytest.approx([x for _, x in man["training"]["loss_curve"]], rel=1e-6)

    plain = sft.parse_args(args)
    assert plain.report_to is None
    files = man["data"]["files"]
    assert training.config_hash(training.validate(plain), files) == man["config_hash"]
    # the same recipe without the tracker: already finished, nothing trained again
    before = (out / training.MANIFEST).stat().st_mtime_ns
    assert training.run(sft.parse_args(args), log=lambda *_: None)["config_hash"] == man["config_hash"]
    assert (out / training.MANIFEST).stat().st_mtime_ns == before


def test_report_to_is_checked_before_anything_is_written(tiny_model, data_root, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="report_to: unknown integration 'tensorbord'.*tensorboard"):
        training.run(_cfg(tiny_model, data_root, out, report_to=["tensorbord"]), log=lambda *_: None)
    assert not out.exists()
    cfg = training.validate(_cfg(tiny_model, data_root, out, report_to="none"))
    assert cfg.report_to == []
    assert training.validate(_cfg(tiny_model, data_root, out, report_to="tensorboard")).report_to == ["tensorboard"]


def _suite_file(tmp: Path, data_root: Path, trainer: dict | None = None, report: dict | None = None, **extra) -> Path:
    import yaml

    doc = {"name": "wf", "threads": 1, "data": {"source": "builtin", "data_dir": str(data_root)},
           "models": {"tiny": {"model": "tiny"}},
           "finetune": [{"name": "ft-products", "task": "sentiment", "train_size": 100, "train_limit": 8,
                         "trainer": {"use_peft": True, "learning_rate": 1e-3, "max_steps": 2, "max_length": 128,
                                     "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                                     "logging_steps": 1, **(trainer or {})}, **extra}],
           "eval": {"test_sets": ["builtin_products", "builtin_sports"],
                    "shots": {"classification": [0, 1], "generation": [0]}, "limit": {"classification": 4,
                                                                                      "generation": 2},
                    "backend": "hf", "batch_size": 4},
           "output": str(tmp / "out")}
    if report:
        doc["report"] = report
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def builtin_root(tmp_path_factory) -> Path:
    from genft.builtin import generate

    root = tmp_path_factory.mktemp("wf-builtin")
    generate(root, log=lambda *_: None)
    return root


def test_a_suites_trainer_takes_report_to_outside_the_recipe_hash(tmp_path, builtin_root):
    from genft.suite import SuiteError, load_suite, plan

    plain = plan(load_suite(_suite_file(tmp_path, builtin_root))).jobs[0]
    tracked = plan(load_suite(_suite_file(tmp_path, builtin_root, {"report_to": "tensorboard"}))).jobs[0]
    assert tracked.config["report_to"] == ["tensorboard"] and tracked.config["run_name"] == "wf/ft-products"
    assert plain.config["report_to"] == [] and plain.config["run_name"] is None
    assert tracked.recipe_hash == plain.recipe_hash and tracked.replicate_hash == plain.replicate_hash
    named = plan(load_suite(_suite_file(tmp_path, builtin_root, {"report_to": ["tensorboard"], "run_name": "x"})))
    assert named.jobs[0].config["run_name"] == "x" and named.jobs[0].recipe_hash == plain.recipe_hash
    with pytest.raises(SuiteError, match=r"suite\.yaml:\d+: finetune\[0\]: report_to: unknown integration 'tb'"):
        load_suite(_suite_file(tmp_path, builtin_root, {"report_to": "tb"}))


# ---------------------------------------------------------------- a real tiny suite with a local tracker


@pytest.fixture(scope="module")
def tracked_suite(tmp_path_factory, builtin_root, tiny_model):
    """A suite run from the command line: the real finetune/sft.py with report_to tensorboard, the suite's
    report.log_to tensorboard; the report written into the test's own folder."""
    import os

    from genft.cli import main

    tmp = tmp_path_factory.mktemp("tracked")
    path = _suite_file(tmp, builtin_root, {"report_to": "tensorboard"}, report={"log_to": "tensorboard"})
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        assert main(["suite", "run", str(path)]) == 0
    finally:
        os.chdir(cwd)
    return tmp, path


def test_the_suite_logs_the_loss_curve_and_every_cells_metrics_to_tensorboard(tracked_suite):
    from genft.suite import store

    tmp, _ = tracked_suite
    out = tmp / "out"
    man = json.loads((out / "checkpoints" / "ft-products" / training.MANIFEST).read_text())
    train = _scalars(out / "checkpoints" / "ft-products")
    curve = sorted(train["train/loss"])
    assert [s for s, _ in curve] == [s for s, _ in man["training"]["loss_curve"]] == [1, 2]
    assert [x for _, x in curve] == pytest.approx([x for _, x in man["training"]["loss_curve"]], rel=1e-6)
    records, _ = store.load_finished(out)
    assert len(records) == 6
    logged = _scalars(out / "tensorboard")
    for r in records:
        tag = f"eval/{r.model}/{r.task}-{r.dataset}/p{r.prompt}/{r.primary_metric}"
        assert logged[tag] and dict(logged[tag])[r.shots] == pytest.approx(r.score), tag
    changes = [t for t in logged if t.endswith("/change_vs_base")]
    assert sum(len(logged[t]) for t in changes) == 3 and all(t.startswith("eval/ft-products/") for t in changes)
    # the report's findings and the cells table as text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = [p for p in (out / "tensorboard").iterdir() if p.name.startswith("events.")]
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("findings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "1. In-domain" in text and "Weight deviation" in text
    assert "| key" in acc.Tensors("cells/text_summary")[0].tensor_proto.string_val[0].decode()
    # the evidence file carries no tracker setting (it is not how findings are judged)
    import gzip

    head = json.loads(gzip.open(tmp / "reports" / "wf" / "cells.jsonl.gz", "rt").readline())
    assert "margins" in head["settings"] and "log_to" not in head["settings"] and "log_dir" not in head["settings"]


# ---------------------------------------------------------------- genft export


def _read(path: Path, fmt: str):
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "csv":
        return pd.read_csv(path)
    return pd.read_json(path, lines=True)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_round_trip_from_a_real_store(tracked_suite, fmt, tmp_path):
    """Every cell of a real store is one row with the documented columns, and its numbers are the record's
    and the report's (a fine-tuned cell's change vs base is the report's comparison of that cell)."""
    import pandas as pd

    from genft.cli import main
    from genft.report import SuiteData
    from genft.report.export import CELL_COLUMNS, ITEM_COLUMNS
    from genft.suite import store

    tmp, path = tracked_suite
    records, _ = store.load_finished(tmp / "out")
    assert main(["export", str(path), "--format", fmt, "-o", str(tmp_path / f"cells.{fmt}")]) == 0
    df = _read(tmp_path / f"cells.{fmt}", fmt)
    assert list(df.columns) == list(CELL_COLUMNS) and len(df) == len(records) == 6
    s = SuiteData("wf", records)
    by_key = {r.key: r for r in records}
    for row in df.to_dict("records"):
        r = by_key[row["key"]]
        assert (row["model"], row["task"], row["dataset"], row["shots"], row["prompt"], row["n"]) == (
            r.model, r.task, r.dataset, r.shots, r.prompt, r.n)
        assert row["score"] == pytest.approx(r.score) and row["metric"] == r.primary_metric
        cond = s.cond(s.group_of(r), (r.task, r.dataset), r.prompt, r.shots, r.demo_seed)
        comp = s.vs_base(cond)  # one seed: the condition is this cell
        if r.finetune is None:
            assert row["setting"] == "base" and row["kind"] == "base"
            assert all(pd.isna(row[c]) for c in ("change_vs_base", "change_lo", "change_hi", "seed", "recipe_hash"))
        else:
            assert row["setting"] == ("in-domain" if r.task == "sentiment" else "cross-task")
            assert row["weights_sha256"] == r.finetune.weights_sha256 and row["recipe_hash"] == r.finetune.recipe_hash
            assert (row["change_vs_base"], row["change_lo"], row["change_hi"]) == pytest.approx(
                (comp.diff, comp.lo, comp.hi))
            assert row["change_lo"] <= row["change_vs_base"] <= row["change_hi"]
    assert main(["export", str(tmp / "out"), "--format", fmt, "--items", "-o", str(tmp_path / f"items.{fmt}")]) == 0
    items = _read(tmp_path / f"items.{fmt}", fmt)
    assert list(items.columns) == list(ITEM_COLUMNS) and len(items) == sum(r.n for r in records)
    for key, rows in items.groupby("key"):
        r = by_key[key]
        assert list(rows["doc_id"]) == r.doc_ids and rows["value"].mean() == pytest.approx(r.score)
        assert list(rows["output"].fillna("")) == r.outputs
        if r.task == "sentiment":
            assert set(rows["gold"]) <= {"positive", "negative"} and rows["acc_first"].tolist() == r.items["acc_first"]


def test_export_of_the_committed_study_cpu_evidence_loads_in_pandas_and_datasets(tmp_path):
    import pandas as pd
    from datasets import load_dataset

    from genft.cli import main
    from genft.report import read_evidence
    from genft.report.export import CELL_COLUMNS, ITEM_COLUMNS

    evidence = REPO / "reports" / "study-cpu" / "cells.jsonl.gz"
    _, records, _, _ = read_evidence(evidence)
    assert main(["export", "--cells", str(evidence), "-o", str(tmp_path / "cells.parquet")]) == 0
    df = pd.read_parquet(tmp_path / "cells.parquet")
    assert list(df.columns) == list(CELL_COLUMNS) and len(df) == len(records) == 200
    assert set(df["setting"]) == {"base", "in-domain", "out-of-domain", "cross-task"}
    ft = df[df["kind"] == "finetuned"]
    assert ft["change_vs_base"].notna().all() and (ft["change_lo"] <= ft["change_hi"]).all()
    assert df[df["kind"] == "base"]["change_vs_base"].isna().all()
    assert (df["score"] - df["base_score"]).dropna().round(9).equals(df["change_vs_base"].dropna().round(9))
    ds = load_dataset("parquet", data_files=str(tmp_path / "cells.parquet"), split="train",
                      cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == list(CELL_COLUMNS) and len(ds) == 200
    assert main(["export", "--cells", str(evidence), "--items", "--format", "jsonl",
                 "-o", str(tmp_path / "items.jsonl")]) == 0
    items = pd.read_json(tmp_path / "items.jsonl", lines=True)
    assert list(items.columns) == list(ITEM_COLUMNS) and len(items) == sum(r.n for r in records)


def test_export_errors_are_clear_and_write_nothing(tmp_path, capsys):
    from genft.cli import main

    evidence = REPO / "reports" / "study-cpu" / "cells.jsonl.gz"
    assert main(["export", "--cells", str(evidence), "-o", str(tmp_path)]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["export", "--cells", str(tmp_path / "none.jsonl.gz"), "-o", str(tmp_path / "x.csv")]) == 2
    assert "none.jsonl.gz" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--cells", str(evidence)]) == 2
    # a tracker that needs a folder is asked for one before the report is written
    assert main(["report", "--cells", str(evidence), "--out-dir", str(tmp_path / "r"), "--log-to", "tensorboard"]) == 2
    assert "--log-dir" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
