"""finetune/sft.py and genft.training, what training is given: FTICL prompts equal to lm-eval's contexts,
random demonstrations (seeded, never the item itself), truncation (demonstrations dropped first, then the
input cut from its start, never the target), and configs (bad configs are clear errors, YAML and the
command line, the shipped recipes)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from conftest import REPO  # noqa: E402
from finetune_setup import DEMOS, TRAIN, _cfg, _items, _lm_eval_contexts, _quiet, sft  # noqa: E402
from genft import data as gdata  # noqa: E402
from genft import training  # noqa: E402
from genft.prompts import render_context, render_target  # noqa: E402
from genft.training import ConfigError, FinetuneConfig, TruncationError  # noqa: E402

torch.set_num_threads(1)


# ---------------------------------------------------------------- FTICL prompts == lm-eval contexts


def _requests(sample) -> list[tuple[str, str]]:
    """(context, continuation) of every request lm-eval made for one doc (one per choice)."""
    return [tuple(a) for a in sample["arguments"]]


def test_ficl_prompt_equals_lm_eval_context(tiny_model, data_root):
    cfg = training.validate(_cfg(tiny_model, data_root, "/nonexistent", icl_shots=3, max_length=1024))
    from transformers import AutoTokenizer

    items, pool, _, _ = training.load_training_items(cfg)
    examples, _, counts = training.build_examples(cfg, AutoTokenizer.from_pretrained(tiny_model), items, pool, _quiet)
    assert counts["examples_demos_cut"] == 0
    res = _lm_eval_contexts(tiny_model, data_root, 3)
    samples = sorted(res["samples"]["genft_sentiment_amazon"], key=lambda s: s["doc_id"])
    assert len(samples) == 4
    for s in samples:
        ex = examples[s["doc_id"]]
        reqs = _requests(s)
        assert all(ctx == ex["prompt"] for ctx, _ in reqs)  # character for character
        assert ex["prompt"] == render_context("sentiment", TRAIN[s["doc_id"]], DEMOS[:3])
        # the gold choice's continuation (target delimiter "" + label) is the training completion
        assert reqs[int(s["target"])][1] == ex["completion"] == render_target("sentiment", TRAIN[s["doc_id"]])


def test_random_demos_exclude_the_item_and_are_seeded():
    items = _items(10, "r") + [dict(_items(1, "r")[0])]  # item 10 is a copy of item 0
    a = training.random_demos("sentiment", items, 3, seed=42)
    assert a == training.random_demos("sentiment", items, 3, seed=42)
    assert a != training.random_demos("sentiment", items, 3, seed=43)
    for i, idx in enumerate(a):
        assert len(set(idx)) == 3 and i not in idx
        assert all(items[j] != items[i] for j in idx)  # nor a copy of it
    assert 10 not in a[0] and 0 not in a[10]


def test_random_demo_prompts(tiny_model, data_root, tok):
    cfg = training.validate(_cfg(tiny_model, data_root, "/nonexistent", icl_shots=2, icl_demos="random",
                                 max_length=1024))
    items, pool, files, _ = training.load_training_items(cfg)
    assert pool == [] and list(files) == ["train_16.jsonl"]  # random demos come from the training items
    examples, demos, _ = training.build_examples(cfg, tok, items, pool, _quiet)
    for item, ex, ds in zip(items, examples, demos):
        assert ex["prompt"] == render_context("sentiment", item, ds) and item not in ds
        assert ex["prompt"].count(item["text"]) == 1 and ex["prompt"].count("### Sentiment:") == 3


# ---------------------------------------------------------------- truncation


def test_truncation_drops_trailing_demos_first(tok):
    measure = training.examples._Measure(tok)
    item = TRAIN[0]
    full = measure(render_context("sentiment", item, DEMOS[:4]), "positive")
    two = measure(render_context("sentiment", item, DEMOS[:2]), "positive")
    ex, info = training.fit_example("sentiment", item, DEMOS[:4], measure, max_length=two)
    assert full > two and info["demos_dropped"] == 2 and info["input_chars_cut"] == 0
    assert ex["prompt"] == render_context("sentiment", item, DEMOS[:2]) and ex["completion"] == "positive"


def test_truncation_cuts_input_from_its_start(tok):
    measure = training.examples._Measure(tok)
    item = {"text": " ".join(f"word{i}" for i in range(200)) + " THE END", "label": "negative"}
    bare = measure(render_context("sentiment", {"text": "", "label": "negative"}), "negative")
    ex, info = training.fit_example("sentiment", item, DEMOS[:2], measure, max_length=bare + 20)
    assert info["demos_dropped"] == 2 and info["input_chars_cut"] > 0 and info["length"] <= bare + 20
    assert ex["prompt"].startswith("### Input:\n") and ex["prompt"].endswith("THE END\n### Sentiment:")
    assert ex["completion"] == "negative"  # the target is never cut


def test_truncation_impossible_is_an_error(tok, tiny_model, data_root, tmp_path):
    measure = training.examples._Measure(tok)
    with pytest.raises(TruncationError, match="max_length"):
        training.fit_example("sentiment", TRAIN[0], [], measure, max_length=5)
    out = tmp_path / "never"
    with pytest.raises(TruncationError, match="training item 0"):
        training.run(_cfg(tiny_model, data_root, out, max_length=5), log=_quiet)
    assert not out.exists()  # nothing partial left


# ---------------------------------------------------------------- bad configs


def test_bad_configs_are_clear_errors(tiny_model, data_root, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="unknown task 'sentimnt'"):
        training.run(_cfg(tiny_model, data_root, out, task="sentimnt"), log=_quiet)
    with pytest.raises(gdata.DataError, match="genft data import-study"):
        training.run(_cfg(tiny_model, data_root, out, dataset="yelp"), log=_quiet)
    with pytest.raises(gdata.DataError, match="training sizes 16"):
        training.run(_cfg(tiny_model, data_root, out, train_size=2000), log=_quiet)
    with pytest.raises(ConfigError, match="icl_shots.*demo pool"):
        training.run(_cfg(tiny_model, data_root, out, icl_shots=9), log=_quiet)
    with pytest.raises(ConfigError, match="icl_demos"):
        training.run(_cfg(tiny_model, data_root, out, icl_shots=2, icl_demos="best"), log=_quiet)
    with pytest.raises(ConfigError, match="train_limit"):
        training.run(_cfg(tiny_model, data_root, out, train_limit=17), log=_quiet)
    assert not out.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: sentiment\nlearning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown setting 'learning_rat'"):
        sft.parse_args(["--config", str(bad)])


def test_yaml_config_and_command_line_override(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("task: sentiment\nlearning_rate: 1.0e-4\nuse_peft: true\nlora_target_modules: all-linear\n"
                 "num_train_epochs: 1\n")
    cfg = sft.parse_args(["--config", str(y), "--learning_rate", "3e-4", "--output_dir", "x"])
    assert cfg.learning_rate == 3e-4 and cfg.use_peft is True and cfg.num_train_epochs == 1
    assert training.validate(FinetuneConfig(**{**training.config_dict(cfg), "model_name_or_path": "m"})
                             ).lora_target_modules == "all-linear"
    d = sft.parse_args(["--task", "nli", "--output_dir", "x"])  # the study's recipe by default
    assert (d.learning_rate, d.num_train_epochs, d.lr_scheduler_type, d.warmup_steps, d.weight_decay) == (
        2e-5, 2.0, "linear", 0, 0.0)
    assert (d.per_device_train_batch_size * d.gradient_accumulation_steps, d.max_length, d.seed, d.use_peft) == (
        32, 1024, 42, False)


def test_recipes_parse(tmp_path):
    recipes = sorted((REPO / "finetune" / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        cfg = sft.parse_args(["--config", str(r), "--output_dir", str(tmp_path / "x")])
        assert cfg.task and cfg.model_name_or_path, r


def test_cli_bad_yaml_key_exits_nonzero_and_writes_nothing(tmp_path, tiny_model, data_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"task: sentiment\nmodel_name_or_path: {tiny_model}\nlora_rank: 8\n")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(REPO / "finetune" / "sft.py"), "--config", str(bad), "--output_dir", str(out),
                        "--data_dir", str(data_root)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "lora_rank" in p.stderr and "bad.yaml" in p.stderr
    assert not out.exists()
