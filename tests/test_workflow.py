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
