"""Suites before anything runs: validation (the shipped suites, unknown keys named with path and line, clear
errors, recipes merged under a run, the data protocol and report settings), the plan (cells, cross-task
prompts, a run's own test sets, a test set's own limit, what a recipe hash covers, a dry run that does no
work, time estimates per dtype) and `genft suite keys` (tiny model, builtin data)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from genft import harness, suite as gsuite
from genft.cli import main as cli_main
from genft.prompts import get_task
from suite_setup import Counter, edit, make_suite, plan


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["smoke", "study", "study-cpu"])
def test_shipped_suites_validate_without_models(name, monkeypatch):
    import genft.models as gmodels

    monkeypatch.setattr(harness, "load_model", lambda *a, **k: pytest.fail("validation loaded a model"))
    monkeypatch.setattr(gmodels, "prepare", lambda *a, **k: pytest.fail("validation provisioned a model"))
    s = gsuite.load_suite(REPO / "suites" / f"{name}.yaml")
    assert s.name == name and s.models and s.eval.test_sets
    assert s.eval.backend in ("genft-hf", "vllm")
    if name == "study":
        assert s.models["llama2-7b"].model == "meta-llama/Llama-2-7b-hf"
        assert len(s.eval.test_sets) == 18 and s.eval.limit["sentiment"] == 250
        assert {r.values["task"] for r in s.runs} == {"summary", "question", "sentiment", "paraphrase", "nli"}
        assert {r.method for r in s.runs} == {"full"} and s.runs[0].values["learning_rate"] == 2.0e-5
        assert {k: v["sentiment"] for k, v in s.eval.prompts.items()} == {"same_task": [1], "cross_task": [1, 2],
                                                                           "base": [1, 2]}


def _bad(tmp_path, builtin_data, fn) -> str:
    path = make_suite(tmp_path, builtin_data)
    edit(path, fn)
    with pytest.raises(gsuite.SuiteError) as e:
        gsuite.load_suite(path)
    msg = str(e.value)
    assert str(path) in msg
    return msg


def test_unknown_key_names_path_line_and_allowed_keys(tmp_path, builtin_data):
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"].update(shotz=[0]))
    assert "eval.shotz" in msg and "unknown key 'shotz'" in msg and "test_sets, shots, prompts" in msg
    assert f"{tmp_path / 'suite.yaml'}:" in msg and msg.split(":")[1].strip().isdigit()  # a line number
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0]["trainer"].update(learning_rat=1e-4))
    assert "finetune[0].trainer.learning_rat" in msg and "learning_rate" in msg
    # genft's keys and the trainer's are apart: a trainer setting at the run level says where it goes
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(learning_rate=1e-4))
    assert "finetune[0].learning_rate" in msg and "put it under finetune[0].trainer" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0]["trainer"].update(seed=3))
    assert "finetune[0].trainer.seed" in msg and "seeds: [s, ...]" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(method="lora"))
    assert "finetune[0].method" in msg and "use_peft" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"]["shots"].update(generaton=[0]))
    assert "eval.shots.generaton" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d.update(modles={}))
    assert "modles" in msg and "allowed keys" in msg


def test_validation_errors_are_clear(tmp_path, builtin_data):
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"].update(test_sets=["builtin_products", "nosuchset"]))
    assert "eval.test_sets[1]" in msg and "nosuchset" in msg and "builtin_restaurants" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"].update(test_sets=["sst2"]))  # a study set in a builtin suite
    assert "unknown builtin data set 'sst2'" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(base="gpt5"))
    assert "finetune[0].base" in msg and "unknown model 'gpt5'" in msg and "tiny" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["models"]["tiny"].update(model="./no/such/folder"))
    assert "models.tiny.model" in msg and "unknown model" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["models"]["tiny"].update(model="smolm2-135m"))
    assert "genft model name" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(recipe="finetune/recipes/nope.yaml"))
    assert "finetune[0].recipe" in msg and "not found" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"]["shots"].update(classification=[0, 9]))
    assert "9 shots" in msg and "demo pool holds 8" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(train_size=150))
    assert "train_size" in msg and "100, 200, 400" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(task="translation"))
    assert "finetune[0].task" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(dataset="builtin_restaurants"))
    assert "finetune[0].dataset" in msg and "builtin_products" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0]["trainer"].update(learning_rate=-1.0))
    assert "learning_rate" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0]["trainer"].update(lora_r="many"))
    assert "finetune[0].trainer.lora_r" in msg and "LoRA rank" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"].update(backend="vllmm"))
    assert "eval.backend" in msg
    # the CLI: exit 2 and the message on stderr, nothing done
    path = make_suite(tmp_path, builtin_data)
    edit(path, lambda d: d["eval"].update(shotz=[0]))
    assert cli_main(["suite", "run", str(path)]) == 2
    assert not (tmp_path / "out").exists()


def test_recipe_is_merged_under_the_run(tmp_path, builtin_data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: sentiment\ntrain_size: 2000\nuse_peft: true\nlearning_rate: 5.0e-4\nlora_r: 4\n"
                      "model_name_or_path: smollm2-135m\nseed: 7\n")
    path = make_suite(tmp_path, builtin_data)
    edit(path, lambda d: d["finetune"][0].update(recipe=str(recipe), train_size=100))
    edit(path, lambda d: d["finetune"][0].update(trainer={"lora_r": 8, "learning_rate": 2.0e-4}))
    r = gsuite.load_suite(path).runs[0]
    assert r.method == "lora" and r.seeds == (7,)  # from the recipe
    assert r.values["lora_r"] == 8 and r.values["train_size"] == 100  # the run's keys win
    assert r.values["learning_rate"] == 2.0e-4 and "model_name_or_path" not in r.values


# ---------------------------------------------------------------- plan and keys


def test_plan_cells_and_cross_task_prompts(tmp_path, builtin_data):
    p = plan(make_suite(tmp_path, builtin_data), provision=True)
    assert [j.run for j in p.jobs] == ["ft-products"] and p.jobs[0].status == "todo"
    base = [c for c in p.cells if c.checkpoint.kind == "base"]
    ft = [c for c in p.cells if c.checkpoint.kind == "finetuned"]
    # base: products x {0,1} + sports x {0}, Prompt-1 only; fine-tuned: same-task Prompt-1, cross-task 1 and 2
    assert sorted((c.dataset, c.prompt, c.shots) for c in base) == [
        ("builtin_products", 1, 0), ("builtin_products", 1, 1), ("builtin_sports", 1, 0)]
    assert sorted((c.dataset, c.prompt, c.shots) for c in ft) == [
        ("builtin_products", 1, 0), ("builtin_products", 1, 1), ("builtin_sports", 1, 0), ("builtin_sports", 2, 0)]
    assert all(c.key and len(c.key) == 64 for c in base) and len({c.key for c in base}) == len(base)
    # a checkpoint's cells have keys only once its weights exist (the key holds the trained weights' identity)
    assert all(c.key is None and not c.done for c in ft)
    mat = base[0].material
    assert mat["backend"] == "hf" and mat["device"] == "cpu" and mat["dtype"] == "float32"
    assert mat["target_delimiter"] == "" and len(mat["checkpoint"]["model"]["weights"]) == 64
    assert [c.n for c in base] == [4, 4, 2] and not (tmp_path / "out").exists()  # planning writes nothing


def test_a_runs_own_test_sets_restrict_only_its_cells(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data)
    p0 = plan(path)
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-products-32", "train_limit": 32,
                                               "test_sets": ["builtin_products"]}))
    p = plan(path)
    extra = sorted((c.dataset, c.prompt, c.shots) for c in p.cells if c.checkpoint.id == "ft-products-32")
    assert extra == [("builtin_products", 1, 0), ("builtin_products", 1, 1)]  # no builtin_sports cells
    assert [c.key for c in p.cells if c.checkpoint.id != "ft-products-32"] == [c.key for c in p0.cells]
    assert p.jobs[0].recipe_hash == p0.jobs[0].recipe_hash
    # a run's test_sets is not part of its fine-tuning config: the same checkpoint either way
    edit(path, lambda d: d["finetune"][1].update(test_sets=["sentiment"]))
    assert plan(path).jobs[1].recipe_hash == p.jobs[1].recipe_hash
    msg = _bad(tmp_path, builtin_data, lambda d: d["finetune"][0].update(test_sets=["builtin_restaurants"]))
    assert "finetune[0].test_sets[0]" in msg and "not in eval.test_sets" in msg and "builtin_sports" in msg


def test_a_test_sets_own_limit_overrides_its_tasks_and_changes_only_its_cells(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, test_sets=["builtin_products", "builtin_restaurants", "builtin_sports"])
    p0 = plan(path)
    edit(path, lambda d: d["eval"]["limit"].update(builtin_restaurants=6))
    p = plan(path)
    n = {(c.checkpoint.kind, c.dataset): c.n for c in p.cells}
    assert n[("base", "builtin_restaurants")] == 6 and n[("base", "builtin_products")] == 4  # same task, own limit
    assert n[("base", "builtin_sports")] == 2
    before = {(c.checkpoint.id, c.dataset, c.prompt, c.shots): c.key for c in p0.cells}
    changed = {k[1] for c in p.cells if (k := (c.checkpoint.id, c.dataset, c.prompt, c.shots)) and c.key
               and before[k] != c.key}
    assert changed == {"builtin_restaurants"}  # only that test set's cells are new cells
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"]["limit"].update(builtin_weather=5))
    assert "eval.limit.builtin_weather" in msg and "not one of the suite's test sets" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"]["limit"].update(builtin_sports=0))
    assert "eval.limit.builtin_sports" in msg and "positive number" in msg
    msg = _bad(tmp_path, builtin_data, lambda d: d["eval"]["limit"].update(sprots=5))
    assert "eval.limit.sprots" in msg and "unknown key" in msg and "builtin_sports" in msg  # the set names too


def test_recipe_hash_covers_what_changes_weights_and_replicates_share_a_seedless_hash(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data)
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-lr", "trainer": {
        **d["finetune"][0]["trainer"], "learning_rate": 1.0e-4}}))
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-seeds", "seeds": [1, 2]}))
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-logging", "trainer": {
        **d["finetune"][0]["trainer"], "logging_steps": 7, "save_steps": 3}}))
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-procs", "trainer": {
        **d["finetune"][0]["trainer"], "num_processes": 2}}))
    jobs = {j.run: j for j in plan(path).jobs}
    assert set(jobs) == {"ft-products", "ft-lr", "ft-seeds-seed1", "ft-seeds-seed2", "ft-logging", "ft-procs"}
    # another learning rate or number of processes: another model, never a replicate
    assert jobs["ft-lr"].replicate_hash != jobs["ft-products"].replicate_hash
    assert jobs["ft-procs"].replicate_hash != jobs["ft-products"].replicate_hash
    # two seeds of one recipe: two checkpoints, one seedless hash
    assert jobs["ft-seeds-seed1"].recipe_hash != jobs["ft-seeds-seed2"].recipe_hash
    assert jobs["ft-seeds-seed1"].replicate_hash == jobs["ft-seeds-seed2"].replicate_hash
    # logging and checkpointing do not change the weights: the same recipe
    assert jobs["ft-logging"].recipe_hash == jobs["ft-products"].recipe_hash


def test_dry_run_does_no_work(tmp_path, builtin_data, monkeypatch, capsys):
    Counter(monkeypatch, forbid=True)
    path = make_suite(tmp_path, builtin_data)
    edit(path, lambda d: d["data"].update(data_dir=str(tmp_path / "no-data-yet")))
    assert cli_main(["suite", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fine-tunes: 1 (0 done, 1 to run)" in out and "cells: 7 (0 done, 7 to run)" in out
    assert "estimated time left" in out and "data missing" in out and "dry run: nothing was done" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "no-data-yet").exists()


def test_data_protocol_and_report_settings_are_checked(tmp_path, builtin_data):
    msg = _bad(tmp_path, builtin_data, lambda d: d.update(report={"one_label_share": 2}))
    assert "report.one_label_share" in msg and "less than or equal to 1" in msg
    msg = _bad(tmp_path, builtin_data,
               lambda d: d.update(report={"margins": {"rougeL": {"kind": "ratio", "value": 1}}}))
    assert "report.margins.rougeL.kind" in msg
    path = make_suite(tmp_path, builtin_data, finetune=False)
    s = gsuite.load_suite(path)
    assert s.protocol == "clean" and s.report.margins["rougeL"].kind == "relative"
    assert plan(path).cells[0].material["protocol"] == "clean"
    # the builtin data is clean-protocol data: a study-protocol suite refuses it, naming the set
    edit(path, lambda d: d["data"].update(protocol="study"))
    with pytest.raises(gsuite.SuiteError, match="builtin_products .* was written under the clean protocol"):
        plan(path)


# ---------------------------------------------------------------- genft suite keys


def _listed_keys(text: str) -> dict[tuple[str, ...], str]:
    """`genft suite keys` output as {key path: help}: two spaces of indentation per level."""
    keys, path = {}, []
    for line in text.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name, _, help_ = line.strip().partition(": ")
        path = path[:depth] + [name]
        keys[tuple(path)] = help_
    return keys


def test_suite_keys_lists_every_key_the_shipped_suites_use_with_its_help():
    out = subprocess.run([sys.executable, "-m", "genft.cli", "suite", "keys"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 0, out.stderr
    keys = _listed_keys(out.stdout)
    containers = {k[:-1] for k in keys if len(k) > 1}
    assert all(help_ for k, help_ in keys.items() if k not in containers), "a key without its help"
    assert ("finetune", "trainer", "learning_rate") in keys and ("report", "margins", "kind") in keys
    user_named = {("models",), ("report", "margins")}  # mappings whose keys the user names
    free = {("eval", "shots"), ("eval", "limit"), ("eval", "prompts")}  # values in their own small languages
    used = 0

    def walk(node, at: tuple[str, ...], where: str) -> None:
        nonlocal used
        if isinstance(node, list):
            for item in node:
                walk(item, at, where)
        elif isinstance(node, dict):
            for k, v in node.items():
                if at in user_named:
                    walk(v, at, f"{where}.{k}")
                    continue
                assert at + (k,) in keys, f"{where}.{k} is not listed by `genft suite keys`"
                used += 1
                if at + (k,) not in free:
                    walk(v, at + (k,), f"{where}.{k}")

    for suite_file in sorted((REPO / "suites").glob("*.yaml")):
        walk(yaml.safe_load(suite_file.read_text()), (), suite_file.name)
    assert used > 50


def test_time_estimate_per_dtype(tmp_path, builtin_data):
    """bf16 cells and bf16 fine-tunes are estimated with the bf16 constants; float32 ones as before."""
    from genft.suite import estimate

    path = make_suite(tmp_path, builtin_data)
    before = plan(path, provision=True)
    edit(path, lambda d: (d["models"]["tiny"].update(dtype="bfloat16"), d["finetune"][0]["trainer"].update(bf16=True)))
    after = plan(path, provision=True)
    base = [(a, b) for a, b in zip(before.cells, after.cells) if a.checkpoint.kind == "base"]
    assert base and all(b.checkpoint.dtype == "bfloat16" for _, b in base)
    for a, b in base:
        family = "classification" if get_task(a.task).is_classification else "generation"
        assert b.est_s == pytest.approx(a.est_s * estimate.DTYPE_TIME["bfloat16"][family])
    assert {get_task(a.task).is_classification for a, _ in base} == {True, False}
    (ja,), (jb,) = before.jobs, after.jobs
    assert ja.tokens_est == jb.tokens_est and jb.est_s == pytest.approx(ja.est_s / estimate.BF16_TRAIN_SPEEDUP)
    assert estimate.cell_seconds("sentiment", 0, 10, "genft-hf", 2, dtype="float16") == \
        estimate.cell_seconds("sentiment", 0, 10, "genft-hf", 2)  # not measured: as float32
