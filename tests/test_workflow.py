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
    assert training.run(sft.parse_args(args), log=lambda *_: None).config_hash == man["config_hash"]
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


def test_a_suites_trainer_takes_report_to_outside_the_recipe_hash(tmp_path, builtin_data):
    from genft.suite import SuiteError, load_suite, read_plan

    plain = read_plan(load_suite(_suite_file(tmp_path, builtin_data))).jobs[0]
    tracked = read_plan(load_suite(_suite_file(tmp_path, builtin_data, {"report_to": "tensorboard"}))).jobs[0]
    assert tracked.config["report_to"] == ["tensorboard"] and tracked.config["run_name"] == "wf/ft-products"
    assert plain.config["report_to"] == [] and plain.config["run_name"] is None
    assert tracked.recipe_hash == plain.recipe_hash and tracked.replicate_hash == plain.replicate_hash
    named = read_plan(load_suite(_suite_file(tmp_path, builtin_data, {"report_to": ["tensorboard"], "run_name": "x"})))
    assert named.jobs[0].config["run_name"] == "x" and named.jobs[0].recipe_hash == plain.recipe_hash
    with pytest.raises(SuiteError, match=r"suite\.yaml:\d+: finetune\[0\]: report_to: unknown integration 'tb'"):
        load_suite(_suite_file(tmp_path, builtin_data, {"report_to": "tb"}))


# ---------------------------------------------------------------- a real tiny suite with a local tracker


@pytest.fixture(scope="module")
def tracked_suite(tmp_path_factory, builtin_data, tiny_model):
    """A suite run from the command line: the real finetune/sft.py with report_to tensorboard, its one run
    also evaluated after steps 1, 2 and 3 of 4, the suite's report.log_to tensorboard; the report written into
    the test's own folder."""
    import os

    from genft.cli import main

    tmp = tmp_path_factory.mktemp("tracked")
    path = _suite_file(tmp, builtin_data, {"report_to": "tensorboard", "max_steps": 4},
                       report={"log_to": "tensorboard"}, evaluate_checkpoints=[1, 2, 3])
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
    assert [s for s, _ in curve] == [s for s, _ in man["training"]["loss_curve"]] == [1, 2, 3, 4]
    assert [x for _, x in curve] == pytest.approx([x for _, x in man["training"]["loss_curve"]], rel=1e-6)
    records, _ = store.load_finished(out)
    assert len(records) == 15  # 3 of the base model, 3 of the final model, 3 of each of the 3 step models
    logged = _scalars(out / "tensorboard")
    for r in records:
        tag = f"eval/{r.model.replace('@', '.')}/{r.task}-{r.dataset}/p{r.prompt}/{r.primary_metric}"
        assert logged[tag] and dict(logged[tag])[r.shots] == pytest.approx(r.score), tag
    changes = [t for t in logged if t.endswith("/change_vs_base")]
    assert sum(len(logged[t]) for t in changes) == 12 and all(t.startswith("eval/ft-products") for t in changes)
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
    assert list(df.columns) == list(CELL_COLUMNS) and len(df) == len(records) == 15
    s = SuiteData("wf", [r for r in records if "step" not in r.checkpoint.identity])
    by_key = {r.key: r for r in records}
    base = {(r.task, r.dataset, r.prompt, r.shots): r for r in records if r.finetune is None}
    for row in df.to_dict("records"):
        r = by_key[row["key"]]
        assert (pd.isna(row["step"]) and "@" not in r.model) or row["step"] == r.checkpoint.identity["step"]
        assert (row["model"], row["task"], row["dataset"], row["shots"], row["prompt"], row["n"]) == (
            r.model, r.task, r.dataset, r.shots, r.prompt, r.n)
        assert row["score"] == pytest.approx(r.score) and row["metric"] == r.primary_metric
        if r.finetune is None:
            assert row["setting"] == "base" and row["kind"] == "base"
            assert all(pd.isna(row[c]) for c in ("change_vs_base", "change_lo", "change_hi", "seed", "recipe_hash"))
        else:
            assert row["setting"] == ("in-domain" if r.task == "sentiment" else "cross-task")
            assert row["weights_sha256"] == r.finetune.weights_sha256 and row["recipe_hash"] == r.finetune.recipe_hash
            b = base[(r.task, r.dataset, r.prompt, r.shots)]
            assert (row["base_score"], row["change_vs_base"]) == pytest.approx((b.score, r.score - b.score))
            assert row["change_lo"] <= row["change_vs_base"] <= row["change_hi"]
            if pd.isna(row["step"]):  # a final model: the report's own comparison (one seed: this cell)
                comp = s.vs_base(s.cond(s.group_of(r), (r.task, r.dataset), r.prompt, r.shots, r.demo_seed))
                assert (row["change_vs_base"], row["change_lo"], row["change_hi"]) == pytest.approx(
                    (comp.diff, comp.lo, comp.hi))
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
    assert list(df.columns) == list(CELL_COLUMNS) and len(df) == len(records) == 268
    assert set(df["setting"]) == {"base", "in-domain", "out-of-domain", "cross-task"}
    ft = df[df["kind"] == "finetuned"]
    assert ft["change_vs_base"].notna().all() and (ft["change_lo"] <= ft["change_hi"]).all()
    assert df[df["kind"] == "base"]["change_vs_base"].isna().all()
    # a one-seed model whose cell holds the base cell's items: the change is the plain difference of the scores
    # (with several seeds it is the group mean's; a staged cell may hold other items than its base cell)
    at = ["task", "dataset", "prompt", "shots"]
    base_n = df[df["kind"] == "base"].set_index(at)["n"]
    seeds = ft.groupby("replicate_hash")["seed"].transform("nunique")
    plain = ft[(seeds == 1) & (ft.set_index(at).index.map(base_n).to_numpy() == ft["n"].to_numpy())]
    assert len(plain) > 0
    assert (plain["score"] - plain["base_score"]).round(9).equals(plain["change_vs_base"].round(9))
    ds = load_dataset("parquet", data_files=str(tmp_path / "cells.parquet"), split="train",
                      cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == list(CELL_COLUMNS) and len(ds) == len(records)
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


# ---------------------------------------------------------------- intermediate models (learning-forgetting curves)


def test_step_models_are_the_model_after_that_step(tiny_model, data_root, tmp_path):
    """The model kept at step 2 of a 3-step run is the 2-step run's final model (constant learning rate, same
    seed: the same first two updates); step models are no part of the recipe hash; a finished run without a
    requested step is named, not silently completed."""
    from safetensors.torch import load_file

    from genft.models import weights_fingerprint

    quiet = lambda *_: None  # noqa: E731
    cfg = _cfg(tiny_model, data_root, tmp_path / "three", lr_scheduler_type="constant", step_models=[2, 1])
    man = training.run(cfg, log=quiet)
    assert sorted(man.steps) == ["1", "2"] and cfg.step_models == [1, 2]
    two = training.run(_cfg(tiny_model, data_root, tmp_path / "two", lr_scheduler_type="constant", max_steps=2),
                       log=quiet)
    step2 = tmp_path / "three" / "steps" / "step-2"
    a, b = load_file(step2 / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert man.steps["2"].weights_sha256 == weights_fingerprint(step2) == two.weights_sha256
    assert len({man.steps["1"].weights_sha256, man.steps["2"].weights_sha256, man.weights_sha256}) == 3
    plain = training.validate(_cfg(tiny_model, data_root, tmp_path / "three", lr_scheduler_type="constant"))
    assert training.config_hash(plain, man.data.files) == man.config_hash
    with pytest.raises(ConfigError, match=r"without the models at steps 3 \(step_models\); delete"):
        training.run(_cfg(tiny_model, data_root, tmp_path / "three", lr_scheduler_type="constant",
                          step_models=[1, 3]), log=quiet)
    with pytest.raises(ConfigError, match="step_models: step 4 is beyond max_steps 3"):
        training.validate(_cfg(tiny_model, data_root, tmp_path / "x", step_models=[4]))


def test_lora_step_models_are_merged_like_the_final_model(tiny_model, data_root, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    man = training.run(_cfg(tiny_model, data_root, tmp_path / "lora", use_peft=True, lora_r=4, lora_alpha=8,
                            lora_dropout=0.0, step_models=[2]), log=lambda *_: None)
    step = tmp_path / "lora" / "steps" / "step-2"
    merged = AutoModelForCausalLM.from_pretrained(step)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), step / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
    assert man.steps["2"].weights_sha256 != man.weights_sha256


def test_intermediate_models_are_checkpoints_of_their_own_and_resumable(tracked_suite):
    from genft.suite import load_suite, read_plan, store
    from genft.suite.execute import Trainer
    from genft.suite.run import run_suite

    tmp, path = tracked_suite
    p = read_plan(load_suite(path))
    ids = [ck.id for ck in p.checkpoints]
    assert ids == ["tiny", "ft-products", "ft-products@step1", "ft-products@step2", "ft-products@step3"]
    steps = {ck.id: ck for ck in p.checkpoints if "@" in ck.id}
    final = next(ck for ck in p.checkpoints if ck.id == "ft-products")
    for n in (1, 2, 3):
        ident = steps[f"ft-products@step{n}"].identity
        assert ident["step"] == n and ident["recipe_hash"] == final.identity["recipe_hash"]
        assert ident["weights"] != final.identity["weights"]
    assert len({c.key for c in p.cells}) == len(p.cells) == 15 and all(c.done for c in p.cells)
    records, _ = store.load_finished(tmp / "out")
    stepped = [r for r in records if r.checkpoint.identity.get("step")]
    assert len(stepped) == 9 and all(r.finetune.weight_deviation is None for r in stepped)

    class NoTrainer(Trainer):
        def train(self, job, log):
            raise AssertionError("trained again")

    # a lost cell of an intermediate model is evaluated again, nothing else
    lost = next(r for r in stepped if r.model == "ft-products@step2")
    store.cell_path(tmp / "out", lost.key).unlink()
    lines: list[str] = []
    assert run_suite(path, trainer=NoTrainer(), log=lines.append) == 0
    assert store.cell_path(tmp / "out", lost.key).is_file()
    assert any("ft-products@step2 (finetuned, sentiment): 3 cells, 1 to run" in x for x in lines), lines


def test_the_report_draws_learning_vs_forgetting_per_run(tracked_suite):
    tmp, _ = tracked_suite
    md = (tmp / "reports" / "wf.md").read_text()
    assert "## Learning vs forgetting over training steps" in md and "![learning vs forgetting](wf/curve-ft-products.png)" in md
    png = tmp / "reports" / "wf" / "curve-ft-products.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = md.split("## Learning vs forgetting over training steps")[1].split("\n## ")[0]
    head = next(line for line in section.splitlines() if line.startswith("| setting"))
    assert [h.strip() for h in head.strip("|").split("|")][4:] == ["step 1", "step 2", "step 3", "final (step 4)"]
    rows = [line for line in section.splitlines() if line.startswith("| in-domain") or line.startswith("| cross-task")]
    assert len(rows) == 3  # products at 0 and 1 shots (in-domain), sports (cross-task)
    # the intermediate models are not in the transfer tables and findings
    before = md.split("## Learning vs forgetting over training steps")[0]
    assert "@step" not in before
    # the evidence file rebuilds the same report, curves included
    from genft.cli import main

    assert main(["report", "--cells", str(tmp / "reports" / "wf" / "cells.jsonl.gz"), "--out-dir",
                 str(tmp / "again")]) == 0
    assert (tmp / "again" / "wf.md").read_text() == md
    assert (tmp / "again" / "wf" / "curve-ft-products.png").read_bytes() == png.read_bytes()


def _at_step(rec, step: int):
    """The record of the same run's model after `step` (as the suite writes it: the step in the identity)."""
    from genft.suite import store

    ident = {**rec.checkpoint.identity, "weights": f"{rec.checkpoint.identity['weights']}@{step}", "step": step}
    material = {**rec.material, "model": f"{rec.model}@step{step}"}
    raw = rec.model_dump(mode="json")
    raw.update(key=store.key_of(material), material=material,
               checkpoint={**raw["checkpoint"], "id": f"{rec.model}@step{step}", "identity": ident})
    return type(rec).model_validate(raw)


def test_curves_show_each_steps_change_vs_base_with_its_interval(tmp_path):
    """Known numbers: in-domain accuracy +0.25 after step 1, +0.5 at the end; the cross-task ROUGE-L flat after
    step 1, then -0.1.  The table says so, export has the step, the main tables leave the steps out."""
    from report_records import ft, ok, record, roundtrip

    from genft.report import SuiteData
    from genft.report.curves import Curves, split
    from genft.report.export import CELL_COLUMNS, cell_rows, frame
    from genft.report.write import build

    run = ft("sentiment", "amazon")
    base = [record("sentiment", "amazon", "in", correct=ok(8, 4)), record("summary", "xsum", "in", rouge=[0.2] * 4)]
    final = [record("sentiment", "amazon", "in", run, correct=ok(8, 8)),
             record("summary", "xsum", "in", run, rouge=[0.1] * 4)]
    step1 = [_at_step(record("sentiment", "amazon", "in", run, correct=[1, 1, 0, 0, 1, 1, 1, 1]), 1),
             _at_step(record("summary", "xsum", "in", run, rouge=[0.2] * 4), 1)]
    records = roundtrip(tmp_path, base + final + step1)
    main, stepped = split(records)
    assert len(main) == 4 and len(stepped) == 2
    c = Curves(SuiteData("synth", main), stepped, {run.run: {"training": {"global_steps": 10}}})
    series = c.series[run.run]
    ind = series[(0, "sentiment", "amazon", 1, 0, -1)]
    cross = series[(2, "summary", "xsum", 1, 0, -1)]
    assert (ind[1].diff, ind["final"].diff) == pytest.approx((0.25, 0.5))
    assert ind[1].lo < 0.25 < ind[1].hi and 0 < ind["final"].lo < 0.5 <= ind["final"].hi
    assert (cross[1].diff, cross["final"].diff) == pytest.approx((0.0, -0.1)) and cross[1].degenerate
    assert c.steps(run.run) == [1, "final"] and c.x(run.run, "final") == 10
    text = c.table(run.run)
    assert "final (step 10)" in text and "+0.250 [" in text and "-0.100 [-0.100, -0.100]" in text
    md, figs = build("synth", records, {run.run: {"training": {"global_steps": 10}}})
    assert f"curve-{run.run}.png" in figs and md.split("## Learning vs forgetting")[0].count("@step") == 0
    rows = frame(cell_rows(SuiteData("synth", records)), CELL_COLUMNS)
    assert sorted(rows["step"].dropna().tolist()) == [1, 1]


def test_a_cluster_evaluates_intermediate_models_after_their_fine_tune(tmp_path, builtin_data):
    from genft.suite import SuiteError, load_suite, read_plan
    from genft.suite.units import units_of

    p = read_plan(load_suite(_suite_file(tmp_path, builtin_data, {"max_steps": 4}, evaluate_checkpoints=[2, 1])))
    assert p.jobs[0].config["step_models"] == [1, 2] and p.jobs[0].status == "todo"
    units = {u.id: u for u in units_of(p)}
    assert set(units) == {"finetune:ft-products", "evaluate:tiny", "evaluate:ft-products",
                          "evaluate:ft-products@step1", "evaluate:ft-products@step2"}
    assert units["evaluate:ft-products@step1"].waits_for == "finetune:ft-products"
    assert units["evaluate:tiny"].waits_for is None
    with pytest.raises(SuiteError, match=r"finetune\[0\]: step_models: step 5 is beyond max_steps 4"):
        load_suite(_suite_file(tmp_path, builtin_data, {"max_steps": 4}, evaluate_checkpoints=[5]))
    with pytest.raises(SuiteError, match="step_models is set by the run's `evaluate_checkpoints"):
        load_suite(_suite_file(tmp_path, builtin_data, {"step_models": [1]}))


def test_asking_for_another_step_retrains_and_fewer_steps_do_not(tracked_suite, tmp_path):
    import yaml

    from genft.suite import load_suite, read_plan

    _, path = tracked_suite
    doc = yaml.safe_load(path.read_text())
    doc["finetune"][0]["evaluate_checkpoints"] = [1, 2, 3, 4]
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump(doc))
    p = read_plan(load_suite(more))
    assert p.jobs[0].status == "retrain" and p.jobs[0].recipe_hash == read_plan(load_suite(path)).jobs[0].recipe_hash
    doc["finetune"][0]["evaluate_checkpoints"] = [2]  # fewer steps: nothing to train
    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(yaml.safe_dump(doc))
    p = read_plan(load_suite(fewer))
    assert p.jobs[0].status == "done" and all(c.done for c in p.cells) and len(p.cells) == 9
