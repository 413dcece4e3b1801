"""Hostile inputs and shared folders, tried as a user would: every YAML genft reads is bounded (alias bombs,
recursive aliases, duplicate keys), recipes are type-checked before anything is written, what genft did not
write is never deleted, suites sharing an output folder keep their reports apart, a resumed finished run
trains no extra step, and a hub id works offline from the hub cache or fails clearly."""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from genft import settings_yaml
from genft import suite as gsuite
from genft.cli import main as cli_main
from genft.report.write import load as report_load
from genft.suite import store
from genft.training import ConfigError, load_yaml_config

from suite_setup import FakeTrainer, edit, make_suite, run

REPO = Path(__file__).resolve().parents[1]
MEMORY_CAP = 2 << 30  # a bounded parser needs far less; an unbounded one fails here instead of eating the machine


def _capped():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(args: list[str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """A genft command in a child process under a 2 GiB address-space cap; (its result, its wall time)."""
    t0 = time.time()
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
                       preexec_fn=_capped)
    return p, time.time() - t0


def alias_bomb(key_lines: list[str]) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**9 (387 million) strings."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(key_lines + lines) + "\n"


# ---------------------------------------------------------------- bounded YAML (suites, recipes)


def test_a_suite_alias_bomb_is_refused_quickly_with_file_and_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(["name: bomb", "models: {tiny: tiny}"]) + "eval: {test_sets: *a8}\n")
    assert path.stat().st_size < 1000
    p, wall = run_capped(["-m", "genft.cli", "suite", "validate", str(path)])
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "MemoryError" not in p.stderr
    assert f"{path}:" in p.stderr and "expand to more than" in p.stderr
    assert wall < 60


def test_a_recipe_alias_bomb_is_refused_by_sft_and_by_a_suite(tmp_path, builtin_data):  # noqa: F811
    bomb = tmp_path / "bomb-recipe.yaml"
    bomb.write_text("task: sentiment\n" + alias_bomb([]).replace("a0: ", "lora_target_modules: ", 1))
    out = tmp_path / "ft"
    p, wall = run_capped([str(REPO / "finetune" / "sft.py"), "--config", str(bomb), "--output_dir", str(out)])
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"--config {bomb}:" in p.stderr and "expand to more than" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
    suite = make_suite(tmp_path, builtin_data)
    edit(suite, lambda d: d["finetune"][0].update(recipe=str(bomb)))
    with pytest.raises(gsuite.SuiteError, match=r"finetune\[0\]\.recipe: --config .*bomb-recipe.yaml:\d+: the aliases"):
        gsuite.load_suite(suite)


def test_recursive_aliases_deep_nesting_and_size_are_refused(tmp_path):
    with pytest.raises(settings_yaml.YamlError, match=r"x.yaml:1: a recursive alias"):
        settings_yaml.loads("a: &a [*a]\n", "x.yaml")
    with pytest.raises(settings_yaml.YamlError, match="nested"):
        settings_yaml.loads("a: " + "[" * 5000 + "]" * 5000 + "\n", "x.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (settings_yaml.MAX_BYTES + 1) + "\n")
    with pytest.raises(settings_yaml.YamlError, match="at most"):
        settings_yaml.load(big)
    # aliases and merge keys within the bounds read as PyYAML reads them
    text = "base: &b {x: 1, y: [1, 2]}\nrun: {<<: *b, y: [3]}\nruns: [*b, *b]\n"
    assert settings_yaml.loads(text, "ok.yaml")[0] == yaml.safe_load(text)


def test_duplicate_keys_are_refused_with_file_and_line(tmp_path, builtin_data, capsys):  # noqa: F811
    suite = make_suite(tmp_path, builtin_data)
    text = suite.read_text().replace("models:\n  tiny:\n    model: tiny\n",
                                     "models:\n  tiny:\n    model: tiny\n  tiny:\n    model: smollm2-135m\n")
    assert text != suite.read_text()
    suite.write_text(text)
    assert cli_main(["suite", "validate", str(suite)]) == 2
    err = capsys.readouterr().err
    line = text.splitlines().index("  tiny:", text.splitlines().index("  tiny:") + 1) + 1
    assert f"{suite}:{line}: duplicate key 'tiny'" in err
    recipe = tmp_path / "dup-recipe.yaml"
    recipe.write_text("task: sentiment\nlearning_rate: 1.0e-4\nlearning_rate: 1.0\n")
    with pytest.raises(ConfigError, match=r"dup-recipe.yaml:3: duplicate key 'learning_rate' \(first at line 2\)"):
        load_yaml_config(recipe)


# ---------------------------------------------------------------- recipes are type-checked before any write


def test_a_float_in_a_recipe_is_an_error_before_anything_is_written(tmp_path, builtin_data, capsys):  # noqa: F811
    recipe = tmp_path / "float.yaml"
    recipe.write_text("task: sentiment\nuse_peft: true\nmax_steps: 2.7\n")
    suite = make_suite(tmp_path, builtin_data)
    edit(suite, lambda d: d["finetune"][0].update(recipe=str(recipe)) or d["finetune"][0]["trainer"].pop("max_steps"))
    assert cli_main(["suite", "validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert f"--config {recipe}: max_steps: input should be a valid integer" in err and "2.7" in err
    out = tmp_path / "ft"
    p = subprocess.run([sys.executable, str(REPO / "finetune" / "sft.py"), "--config", str(recipe), "--output_dir",
                        str(out), "--data_dir", str(builtin_data), "--model_name_or_path", "tiny"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "max_steps" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not out.exists()
    for bad, what in (("lora_target_modules: [[q_proj]]", "lora_target_modules"), ("use_peft: 3", "use_peft"),
                      ("warmup_steps: true", "warmup_steps"), ("learning_rate: fast", "learning_rate")):
        recipe.write_text(f"task: sentiment\n{bad}\n")
        with pytest.raises(ConfigError, match=f"float.yaml: {what}: "):
            load_yaml_config(recipe)
    recipe.write_text("task: sentiment\nmax_steps: 2.0\nlearning_rate: 2e-4\nnum_train_epochs: 1\n")
    values = load_yaml_config(recipe)  # exact values convert; an int for a float stays (the recipe hash with it)
    assert values == {"task": "sentiment", "max_steps": 2, "learning_rate": 2e-4, "num_train_epochs": 1}
    assert type(values["max_steps"]) is int and type(values["num_train_epochs"]) is int


# ---------------------------------------------------------------- never delete what genft did not write


def test_a_foreign_file_in_a_checkpoint_folder_is_never_deleted(tmp_path, builtin_data, capsys):  # noqa: F811
    suite = make_suite(tmp_path, builtin_data)
    folder = tmp_path / "out" / "checkpoints" / "ft-products"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    trainer = FakeTrainer()
    with pytest.raises(gsuite.SuiteError, match=r"ft-products holds files genft did not write \(notes.txt\); genft "
                                                r"never deletes them: move them out"):
        run(suite, trainer=trainer)
    assert cli_main(["suite", "run", str(suite), "--dry-run"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "my notes" and trainer.calls == []
    # beside a genft run of another config: still refused, nothing removed
    (folder / "genft_run.json").write_text(json.dumps({"config_hash": "another", "config": {}}))
    with pytest.raises(gsuite.SuiteError, match="a run of another config and files genft did not write"):
        run(suite, trainer=trainer)
    assert sorted(p.name for p in folder.iterdir()) == ["genft_run.json", "notes.txt"]
    # without the foreign file the old run is genft's own: retrained
    (folder / "notes.txt").unlink()
    assert run(suite, trainer=trainer) == 0 and trainer.calls == ["ft-products"]


def test_the_trainer_refuses_a_folder_that_gained_a_foreign_file_after_planning(tmp_path, builtin_data):  # noqa: F811
    from genft.suite.execute import finetune

    suite = make_suite(tmp_path, builtin_data)
    folder = tmp_path / "out" / "checkpoints" / "ft-products"
    folder.mkdir(parents=True)
    (folder / "genft_run.json").write_text(json.dumps({"config_hash": "another", "config": {}}))
    job = gsuite.read_plan(gsuite.load_suite(suite)).jobs[0]
    assert job.status == "retrain"
    (folder / "README.md").write_text("# my model\n")  # a README that is not TRL's model card
    trainer = FakeTrainer()
    error = finetune(job, trainer, log=lambda *_: None)
    assert error and "README.md" in error and "never deletes" in error and trainer.calls == []
    assert (folder / "README.md").read_text() == "# my model\n" and (folder / "genft_run.json").is_file()


def test_clean_temp_removes_only_genfts_own_temporary_files(tmp_path):
    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    (out / "plans").mkdir()
    key = "a" * 64
    own = [out / ".plan.json.ab3_x9zq.tmp", out / "cells" / f".{key}.json.xyz.tmp",
           out / "plans" / ".smoke.json.k2j4h5g6.tmp",
           out / "cells" / f".{key}.json.0123abcd.tmp", out / "cells" / f".{key}.samples.jsonl.zzzzzzzz.tmp"]
    foreign = [out / ".notes.tmp", out / ".my.data.tmp", out / ".results.csv.ab3_x9zq.tmp",
               out / "cells" / ".notes.json.12345678.tmp", out / "cells" / f".{key}.json.tmp"]
    for p in own + foreign:
        p.write_text("x")
    assert store.clean_temp(out) == len(own)
    assert not any(p.exists() for p in own) and all(p.read_text() == "x" for p in foreign)


# ---------------------------------------------------------------- two suites, one output folder


def test_two_suites_sharing_an_output_folder_never_report_each_others_cells(tmp_path, builtin_data, capsys):  # noqa: F811
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    s1 = make_suite(tmp_path / "a", builtin_data, out=tmp_path / "shared", finetune=False,
                    test_sets=["builtin_products"], shots={"classification": [0]})
    edit(s1, lambda d: d.update(name="s1"))
    s2 = make_suite(tmp_path / "b", builtin_data, out=tmp_path / "shared", finetune=False,
                    test_sets=["builtin_sports"], shots={"classification": [0]})
    edit(s2, lambda d: d.update(name="s2"))
    assert run(s1) == 0
    name, first, _, _ = report_load(s1)
    assert name == "s1" and {r.dataset for r in first} == {"builtin_products"}
    assert run(s2) == 0  # ran last: its plan no longer decides what s1's report shows
    name, again, _, _ = report_load(s1)
    assert name == "s1" and sorted(r.key for r in again) == sorted(r.key for r in first)
    name, second, _, _ = report_load(s2)
    assert name == "s2" and {r.dataset for r in second} == {"builtin_sports"}
    assert cli_main(["report", str(tmp_path / "shared"), "--out-dir", str(tmp_path / "r")]) == 2
    assert "2 suites share this output folder (s1, s2)" in capsys.readouterr().err
    # another suite FILE of the same name in the same folder: refused, not mixed up
    s1b = tmp_path / "c" / "suite.yaml"
    s1b.parent.mkdir()
    shutil.copy(s1, s1b)
    with pytest.raises(store.StoreError, match="two suite files named s1 share the output folder"):
        report_load(s1b)


# ---------------------------------------------------------------- a resumed, finished max_steps run


def test_resuming_a_run_killed_after_its_last_save_trains_no_extra_step(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from genft import data as gdata
    from genft import training

    from finetune_setup import DEMOS, TRAIN

    root = tmp_path / "data"
    gdata.write_dataset("sentiment", "amazon", {"train_16": TRAIN, "demos": DEMOS, "test": TRAIN[:4]}, root)

    def cfg(out):  # a constant learning rate: one more step would change the weights
        return training.FinetuneConfig(
            task="sentiment", dataset="amazon", train_size=16, data_dir=str(root), model_name_or_path=tiny_model,
            output_dir=str(out), max_steps=2, save_steps=2, per_device_train_batch_size=4,
            gradient_accumulation_steps=1, learning_rate=1e-2, lr_scheduler_type="constant", max_length=256,
            torch_threads=1, keep_checkpoints=True)

    ref = training.run(cfg(tmp_path / "ref"), log=lambda *_: None)
    out = tmp_path / "cut"
    training.run(cfg(out), log=lambda *_: None)
    (out / "genft_manifest.json").unlink()  # killed after the last checkpoint, before the manifest
    (out / "model.safetensors").unlink()
    lines: list[str] = []
    man = training.run(cfg(out), log=lines.append)
    assert man.training.global_steps == 2 and not any("step 3/" in line for line in lines)
    assert any("holds the last step (2/2)" in line for line in lines)
    assert man.weights_sha256 == ref.weights_sha256
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)


# ---------------------------------------------------------------- a hub id as the base model, offline


def _hub_cache(tmp_path: Path, tiny_model: str, repo: str) -> tuple[Path, str]:
    """A Hugging Face hub cache holding `repo` at one revision: the tiny model's files as its snapshot."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hf-hub"
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in Path(tiny_model).iterdir():
        if f.is_file() and f.name != "genft_model.json":
            shutil.copy(f, snap / f.name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    return cache, rev


def test_a_hub_id_base_model_offline_from_the_hub_cache_or_a_clear_error(tiny_model, tmp_path, builtin_data,  # noqa: F811
                                                                         monkeypatch, capsys):
    from huggingface_hub import constants

    cache, rev = _hub_cache(tmp_path, tiny_model, "genft-tests/tiny-llama")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # (read from the environment at import)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = make_suite(tmp_path, builtin_data, finetune=False, test_sets=["builtin_products"],
                       shots={"classification": [0]})
    edit(suite, lambda d: d.update(models={"hub": {"model": "genft-tests/tiny-llama"}}))
    assert run(suite) == 0
    recs = store.load_finished(tmp_path / "out")[0]
    assert len(recs) == 1 and recs[0].checkpoint.identity == {"model": {"hub": "genft-tests/tiny-llama",
                                                                        "revision": rev}}
    assert recs[0].provenance.dtype == "float32" and recs[0].checkpoint.path == "genft-tests/tiny-llama"
    # a hub id that is not in the cache, offline: one clear line, exit 2, before any work
    edit(suite, lambda d: d.update(models={"hub": {"model": "genft-tests/not-cached"}}, output=str(tmp_path / "o2")))
    assert cli_main(["suite", "run", str(suite), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "'genft-tests/not-cached': a hub id that is not in the local hub cache" in err and "offline" in err
    assert "hf download genft-tests/not-cached" in err and "Traceback" not in err
    assert not (tmp_path / "o2" / "cells").exists()
