"""Suites: validation, planning and cache keys, resumable runs (tiny model, builtin data, a fake trainer)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genft import harness, suite as gsuite
from genft.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from genft.builtin import generate

    root = tmp_path_factory.mktemp("suite-data")
    generate(root, log=lambda *_: None)
    return root


class FakeTrainer(gsuite.Trainer):
    """Writes a 'fine-tuned' model (the tiny model's files) and a manifest, as sft.py would, in no time."""

    def __init__(self):
        self.calls: list[str] = []

    def train(self, job, log):
        from genft.models import prepare

        self.calls.append(job.run)
        src = prepare("tiny")
        job.out_dir.mkdir(parents=True, exist_ok=True)
        for p in src.iterdir():
            if p.is_file() and p.name != "genft_model.json":
                shutil.copy2(p, job.out_dir / p.name)
        manifest = {"status": "finished", "config": job.config, "config_hash": job.config_hash,
                    "weight_deviation": {"mean_abs_diff": float(job.config["learning_rate"]), "parameters": 1},
                    "training": {"wall_time_s": 0.1, "tokens_per_s": 1000.0, "loss_curve": [[1, 1.0]]}}
        (job.out_dir / "genft_manifest.json").write_text(json.dumps(manifest))


class NoTrainer(gsuite.Trainer):
    def train(self, job, log):
        raise AssertionError(f"the trainer was called for {job.run}")


def make_suite(tmp: Path, data_root: Path, out: Path | None = None, finetune=True, **eval_overrides) -> Path:
    doc = {
        "name": "t",
        "data": {"source": "builtin", "data_dir": str(data_root)},
        "models": {"tiny": {"model": "tiny"}},
        "finetune": [{"name": "ft-products", "base": "tiny", "task": "sentiment", "train_size": 100,
                      "train_limit": 16, "method": "lora", "learning_rate": 2.0e-4, "max_steps": 1,
                      "max_length": 128}] if finetune else [],
        "eval": {"test_sets": ["builtin_products", "builtin_sports"],
                 "shots": {"classification": [0, 1], "generation": [0]},
                 "prompts": {"same_task": [1], "cross_task": [1, 2], "base": [1]},
                 "limit": {"classification": 4, "generation": 2},
                 "backend": "hf", "batch_size": 4, "group": "cell", **eval_overrides},
        "output": str(out or tmp / "out"),
    }
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def edit(path: Path, fn) -> None:
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    d = out / "cells"
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir())} if d.is_dir() else {}


class Counter:
    """Counts harness.load_model / harness.evaluate calls (and which tasks were evaluated)."""

    def __init__(self, monkeypatch, forbid=False):
        self.loads = 0
        self.evaluated: list[tuple] = []
        real_load, real_eval = harness.load_model, harness.evaluate

        def load_model(*a, **k):
            if forbid:
                raise AssertionError("a model was loaded")
            self.loads += 1
            return real_load(*a, **k)

        def evaluate(lm, tasks, num_fewshot=0, **k):
            self.evaluated += [(t if isinstance(t, str) else t.config.task, num_fewshot, k.get("limit")) for t in tasks]
            return real_eval(lm, tasks, num_fewshot=num_fewshot, **k)

        monkeypatch.setattr(harness, "load_model", load_model)
        monkeypatch.setattr(harness, "evaluate", evaluate)


def run(path: Path, trainer=None, **kw) -> int:
    return gsuite.run_suite(path, trainer=trainer or NoTrainer(), log=lambda *_: None, report=False, **kw)


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
        assert {k: v["sentiment"] for k, v in s.eval.prompts.items()} == {"same_task": [1], "cross_task": [1, 2],
                                                                           "base": [1, 2]}


def _bad(tmp_path, data_root, fn) -> str:
    path = make_suite(tmp_path, data_root)
    edit(path, fn)
    with pytest.raises(gsuite.SuiteError) as e:
        gsuite.load_suite(path)
    msg = str(e.value)
    assert str(path) in msg
    return msg


def test_unknown_key_names_path_line_and_allowed_keys(tmp_path, data_root):
    msg = _bad(tmp_path, data_root, lambda d: d["eval"].update(shotz=[0]))
    assert "eval.shotz" in msg and "unknown key 'shotz'" in msg and "test_sets, shots, prompts" in msg
    assert f"{tmp_path / 'suite.yaml'}:" in msg and msg.split(":")[1].strip().isdigit()  # a line number
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(learning_rat=1e-4))
    assert "finetune[0].learning_rat" in msg and "learning_rate" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["eval"]["shots"].update(generaton=[0]))
    assert "eval.shots.generaton" in msg
    msg = _bad(tmp_path, data_root, lambda d: d.update(modles={}))
    assert "modles" in msg and "allowed keys" in msg


def test_validation_errors_are_clear(tmp_path, data_root):
    msg = _bad(tmp_path, data_root, lambda d: d["eval"].update(test_sets=["builtin_products", "nosuchset"]))
    assert "eval.test_sets[1]" in msg and "nosuchset" in msg and "builtin_restaurants" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["eval"].update(test_sets=["sst2"]))  # a study set in a builtin suite
    assert "unknown builtin data set 'sst2'" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(base="gpt5"))
    assert "finetune[0].base" in msg and "unknown model 'gpt5'" in msg and "tiny" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["models"]["tiny"].update(model="./no/such/folder"))
    assert "models.tiny.model" in msg and "unknown model" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["models"]["tiny"].update(model="smolm2-135m"))
    assert "genft model name" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(recipe="finetune/recipes/nope.yaml"))
    assert "finetune[0].recipe" in msg and "not found" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["eval"]["shots"].update(classification=[0, 9]))
    assert "9 shots" in msg and "demo pool holds 8" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(train_size=150))
    assert "train_size" in msg and "100, 200, 400" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(task="translation"))
    assert "finetune[0].task" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(dataset="builtin_restaurants"))
    assert "finetune[0].dataset" in msg and "builtin_products" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(learning_rate=-1.0))
    assert "learning_rate" in msg
    msg = _bad(tmp_path, data_root, lambda d: d["eval"].update(backend="vllmm"))
    assert "eval.backend" in msg
    # the CLI: exit 2 and the message on stderr, nothing done
    path = make_suite(tmp_path, data_root)
    edit(path, lambda d: d["eval"].update(shotz=[0]))
    assert cli_main(["suite", "run", str(path)]) == 2
    assert not (tmp_path / "out").exists()


def test_recipe_is_merged_under_the_run(tmp_path, data_root):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: sentiment\ntrain_size: 2000\nuse_peft: true\nlearning_rate: 5.0e-4\nlora_r: 4\n"
                      "model_name_or_path: smollm2-135m\nseed: 7\n")
    path = make_suite(tmp_path, data_root)
    edit(path, lambda d: d["finetune"][0].update(recipe=str(recipe), lora_r=8, train_size=100))
    d = yaml.safe_load(path.read_text())
    del d["finetune"][0]["method"]
    path.write_text(yaml.safe_dump(d))
    r = gsuite.load_suite(path).runs[0]
    assert r.method == "lora" and r.seeds == [7]  # from the recipe
    assert r.values["lora_r"] == 8 and r.values["train_size"] == 100  # the run's keys win
    assert r.values["learning_rate"] == 2.0e-4 and "model_name_or_path" not in r.values


# ---------------------------------------------------------------- plan and keys


def test_plan_cells_and_cross_task_prompts(tmp_path, data_root):
    p = gsuite.plan(make_suite(tmp_path, data_root))
    assert [j.run for j in p.jobs] == ["ft-products"] and p.jobs[0].status == "todo"
    base = [c for c in p.cells if c.checkpoint.kind == "base"]
    ft = [c for c in p.cells if c.checkpoint.kind == "finetuned"]
    # base: products x {0,1} + sports x {0}, Prompt-1 only; fine-tuned: same-task Prompt-1, cross-task 1 and 2
    assert sorted((c.dataset, c.prompt, c.shots) for c in base) == [
        ("builtin_products", 1, 0), ("builtin_products", 1, 1), ("builtin_sports", 1, 0)]
    assert sorted((c.dataset, c.prompt, c.shots) for c in ft) == [
        ("builtin_products", 1, 0), ("builtin_products", 1, 1), ("builtin_sports", 1, 0), ("builtin_sports", 2, 0)]
    assert all(c.key and len(c.key) == 64 for c in p.cells) and len({c.key for c in p.cells}) == len(p.cells)
    mat = p.cells[0].material
    assert "backend" not in json.dumps(mat) and mat["target_delimiter"] == "" and mat["checkpoint"]["model"]["weights"]
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_a_runs_own_test_sets_restrict_only_its_cells(tmp_path, data_root):
    path = make_suite(tmp_path, data_root)
    p0 = gsuite.plan(path)
    before = {(c.checkpoint.id, c.dataset, c.prompt, c.shots): c.key for c in p0.cells}
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-products-32", "train_limit": 32,
                                               "test_sets": ["builtin_products"]}))
    p = gsuite.plan(path)
    extra = sorted((c.dataset, c.prompt, c.shots) for c in p.cells if c.checkpoint.id == "ft-products-32")
    assert extra == [("builtin_products", 1, 0), ("builtin_products", 1, 1)]  # no builtin_sports cells
    after = {(c.checkpoint.id, c.dataset, c.prompt, c.shots): c.key for c in p.cells if c.checkpoint.id != "ft-products-32"}
    assert after == before  # the other runs' cells (and keys) are untouched
    assert p.jobs[0].config_hash == p0.jobs[0].config_hash
    # a run's test_sets is not part of its fine-tuning config: the same checkpoint either way
    edit(path, lambda d: d["finetune"][1].update(test_sets=["sentiment"]))
    assert gsuite.plan(path).jobs[1].config_hash == p.jobs[1].config_hash
    msg = _bad(tmp_path, data_root, lambda d: d["finetune"][0].update(test_sets=["builtin_restaurants"]))
    assert "finetune[0].test_sets[0]" in msg and "not in eval.test_sets" in msg and "builtin_sports" in msg


def test_dry_run_does_no_work(tmp_path, data_root, monkeypatch, capsys):
    Counter(monkeypatch, forbid=True)
    path = make_suite(tmp_path, data_root)
    edit(path, lambda d: d["data"].update(data_dir=str(tmp_path / "no-data-yet")))
    assert cli_main(["suite", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fine-tunes: 1 (0 done, 1 to run)" in out and "cells: 7 (0 done, 7 to run)" in out
    assert "estimated time left" in out and "data missing" in out and "dry run: nothing was done" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "no-data-yet").exists()


def test_run_rerun_and_changed_settings(tmp_path, data_root, monkeypatch):
    path = make_suite(tmp_path, data_root)
    out = tmp_path / "out"
    trainer = FakeTrainer()
    c = Counter(monkeypatch)
    assert run(path, trainer) == 0
    assert trainer.calls == ["ft-products"] and c.loads == 2 and len(c.evaluated) == 7
    cells = gsuite.load_cells(path)
    assert len(cells) == 7
    rec = next(x for x in cells if x["model"] == "ft-products" and x["dataset"] == "builtin_products" and x["shots"] == 1)
    assert set(rec) == {"key", "suite", "model", "checkpoint", "base", "finetune", "task", "dataset", "domain", "prompt",
                        "shots", "limit", "demo_seed", "n", "metrics", "items", "majority_rate", "wall_s", "provenance"}
    assert rec["finetune"] == {"run": "ft-products", "task": "sentiment", "dataset": "builtin_products",
                               "train_size": 100, "train_limit": 16, "method": "lora", "icl_shots": 0,
                               "icl_demos": None, "seed": 42, "weight_deviation": 2.0e-4}
    assert rec["n"] == 4 and rec["domain"] == "in" and rec["base"] == "tiny" and rec["demo_seed"] is None
    assert "acc_first" in rec["metrics"] and not any("stderr" in k or "," in k for k in rec["metrics"])
    assert len(rec["items"]["acc_first"]) == 4 and rec["metrics"]["acc_first"] == pytest.approx(
        sum(rec["items"]["acc_first"]) / 4)
    assert rec["majority_rate"] >= 0.5
    prov = rec["provenance"]
    assert prov["backend"] == "hf" and prov["lm_eval"] and prov["torch"] and len(prov["data_sha256"]) == 64
    gen = next(x for x in cells if x["task"] == "summary" and x["model"] == "tiny")
    assert gen["majority_rate"] is None and len(gen["items"]["rougeL"]) == 2 and gen["finetune"] is None
    assert (out / "cells" / f"{rec['key']}.samples.jsonl").is_file()
    assert set(gsuite.load_manifests(path)) == {"ft-products"}
    plan_json = json.loads((out / "plan.json").read_text())
    assert len(plan_json["cells"]) == 7 and all(x["done"] for x in plan_json["cells"])

    # a finished suite: no model load, no training, no file touched
    before = snapshot(out)
    monkeypatch.undo()
    Counter(monkeypatch, forbid=True)
    assert run(path) == 0
    assert snapshot(out) == before

    # one more shot count: exactly the new cells run (classification test set, both checkpoints)
    monkeypatch.undo()
    c = Counter(monkeypatch)
    edit(path, lambda d: d["eval"]["shots"].update(classification=[0, 1, 2]))
    assert run(path) == 0
    assert sorted(c.evaluated) == [("genft_sentiment_builtin_products", 2, 4)] * 2
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items())
    assert len(gsuite.load_cells(path)) == 9

    # a new limit for generation: only the generation cells (3) run again
    monkeypatch.undo()
    c = Counter(monkeypatch)
    edit(path, lambda d: d["eval"]["limit"].update(generation=3))
    assert run(path) == 0
    assert sorted(t for t, _, _ in c.evaluated) == ["genft_summary_builtin_sports", "genft_summary_builtin_sports",
                                                    "genft_summary_builtin_sports_p2"]
    assert all(lim == 3 for _, _, lim in c.evaluated)
    assert all(r["n"] == 3 for r in gsuite.load_cells(path) if r["task"] == "summary")

    # a new learning rate: the fine-tune and its cells run again, the base model's cells do not
    monkeypatch.undo()
    c = Counter(monkeypatch)
    trainer = FakeTrainer()
    before = snapshot(out)
    edit(path, lambda d: d["finetune"][0].update(learning_rate=1.0e-4))
    assert run(path, trainer) == 0
    assert trainer.calls == ["ft-products"] and c.loads == 1 and len(c.evaluated) == 5
    cells = gsuite.load_cells(path)
    assert len(cells) == 9  # the plan's cells only: the old fine-tune's 5 cells dropped out
    assert {r["finetune"]["weight_deviation"] for r in cells if r["finetune"]} == {1.0e-4}
    base_keys = {r["key"] for r in cells if r["model"] == "tiny"}
    assert all(before[f"{k}.json"] == snapshot(out)[f"{k}.json"] for k in base_keys)


_KILL_SCRIPT = """
import os, sys
os.environ["OMP_NUM_THREADS"] = "1"
import torch; torch.set_num_threads(1)
from genft import suite as gsuite
real = gsuite._write_atomic
count = [0]
def write(path, data):
    if path.name.endswith(".json") and not path.name.endswith(".samples.jsonl") and path.parent.name == "cells":
        count[0] += 1
        if count[0] == 3:  # the 3rd cell: evaluated, samples written, its record half-written: die like kill -9
            path.with_name("." + path.name + ".xyz.tmp").write_bytes(data[: len(data) // 2])
            os._exit(9)
    return real(path, data)
gsuite._write_atomic = write
sys.exit(gsuite.run_suite(sys.argv[1], report=False))
"""


def test_resume_after_kill_mid_cell(tmp_path, data_root, monkeypatch):
    path = make_suite(tmp_path, data_root, finetune=False)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(path)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    finished = {k: v for k, v in snapshot(out).items() if k.endswith(".json") and not k.startswith(".")}
    assert len(finished) == 2 and any(k.startswith(".") for k in snapshot(out))  # 2 cells + the torn temp file
    # re-run: continues, keeps the finished cells byte for byte, leaves no temporary file
    c = Counter(monkeypatch)
    assert run(path) == 0
    assert c.loads == 1 and len(c.evaluated) == 1  # 3 cells in the plan (base only), 2 were finished
    snap = snapshot(out)
    assert all(snap[k] == v for k, v in finished.items())
    assert not any(k.startswith(".") for k in snap) and len([k for k in snap if k.endswith(".json")]) == 3
    for p in (out / "cells").glob("*.json"):
        json.loads(p.read_text())
    # the same numbers as an uninterrupted run
    (tmp_path / "ref").mkdir()
    ref = make_suite(tmp_path / "ref", data_root, out=tmp_path / "ref-out", finetune=False)
    assert run(ref) == 0
    resumed = {r["key"]: (r["metrics"], r["items"]) for r in gsuite.load_cells(path)}
    clean = {r["key"]: (r["metrics"], r["items"]) for r in gsuite.load_cells(ref)}
    assert resumed == clean and len(clean) == 3


def test_random_demo_cells(tmp_path, data_root):
    path = make_suite(tmp_path, data_root, finetune=False, demos="both", demo_seeds=[1, 2],
                      test_sets=["builtin_products"], shots={"classification": [0, 2]})
    p = gsuite.plan(path)
    assert sorted(((c.shots, c.demo_seed) for c in p.cells), key=str) == [(0, None), (2, 1), (2, 2), (2, None)]
    assert run(path) == 0
    cells = {(r["shots"], r["demo_seed"]): r for r in gsuite.load_cells(path)}
    assert len(cells) == 4 and cells[(2, 1)]["key"] != cells[(2, 2)]["key"]
    ctx = lambda r: [json.loads(x)["arguments"] for x in  # noqa: E731
                     (tmp_path / "out" / "cells" / f"{r['key']}.samples.jsonl").read_text().splitlines()]
    assert ctx(cells[(2, 1)]) != ctx(cells[(2, None)])  # seeded random demos differ from the first k


def test_group_shots_one_call_per_shot_count(tmp_path, data_root, monkeypatch):
    calls = []
    real = harness.evaluate
    monkeypatch.setattr(harness, "evaluate", lambda lm, tasks, **k: calls.append(list(tasks)) or real(lm, tasks, **k))
    path = make_suite(tmp_path, data_root, finetune=False, group="shots",
                      test_sets=["builtin_products", "builtin_restaurants"], shots={"classification": [0, 1]})
    assert run(path) == 0
    assert sorted(map(sorted, calls)) == [["genft_sentiment_builtin_products", "genft_sentiment_builtin_restaurants"]] * 2
    cells = gsuite.load_cells(path)
    assert len(cells) == 4 and all(c["provenance"]["wall_s_shared_by"] == 2 and c["n"] == 4 for c in cells)


@pytest.mark.skipif(not (REPO / "finetune" / "sft.py").is_file(), reason="finetune/sft.py not there")
def test_real_trainer_agrees_on_the_config_hash(tmp_path, data_root):
    """The real finetune/sft.py subprocess (tiny model, one step): its manifest's hash is the suite's."""
    path = make_suite(tmp_path, data_root, test_sets=["builtin_products"], shots={"classification": [0]})
    edit(path, lambda d: d.update(threads=1))
    lines: list[str] = []
    assert gsuite.run_suite(path, log=lines.append, report=False) == 0, "\n".join(lines[-30:])
    man = gsuite.load_manifests(path)["ft-products"]
    job = gsuite.plan(path).jobs[0]
    assert job.status == "done" and man["config_hash"] == job.config_hash
    assert (tmp_path / "out" / "configs" / "ft-products.yaml").is_file()
    assert any("step 1/1" in x for x in lines)
    cells = gsuite.load_cells(path)
    assert len(cells) == 2 and {r["model"] for r in cells} == {"tiny", "ft-products"}
    ft = next(r for r in cells if r["finetune"])
    assert ft["finetune"]["weight_deviation"] > 0
