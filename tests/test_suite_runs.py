"""Suite runs: reruns and changed settings (exactly the new cells run), retrained weights, the device, dtype
and backend in a cell's key, bf16 refused on a CPU without it, the store's integrity (torn or foreign cell
files), resuming after a kill mid-cell, random-demo cells, grouped shots, the real trainer's config hash,
replicates in the report, and what a recipe hash and a cell key follow (tiny model, builtin data, a fake
trainer that writes real weights and the manifest sft.py writes)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from genft import harness, suite as gsuite
from genft.cli import main as cli_main
from genft.models import weights_fingerprint
from genft.precision import cpu_bf16_missing
from genft.suite import observe, store
from genft.suite.run import run_suite
from suite_setup import Counter, FakeTrainer, edit, make_suite, plan, run


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    d = out / "cells"
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir())} if d.is_dir() else {}


def load_cells(path: Path) -> list[store.CellRecord]:
    """The finished cells of the last plan, read strictly through the store (as the report reads them)."""
    return store.load_finished(gsuite.output_of(path))[0]


# ---------------------------------------------------------------- runs, reruns, keys and the store


def test_run_rerun_and_changed_settings(tmp_path, builtin_data, monkeypatch):
    path = make_suite(tmp_path, builtin_data)
    out = tmp_path / "out"
    trainer = FakeTrainer()
    c = Counter(monkeypatch)
    assert run(path, trainer) == 0
    assert trainer.calls == ["ft-products"] and c.loads == 2 and len(c.evaluated) == 7
    cells = load_cells(path)
    assert len(cells) == 7
    rec = next(x for x in cells if x.model == "ft-products" and x.dataset == "builtin_products" and x.shots == 1)
    job = plan(path).jobs[0]
    man = json.loads((out / "checkpoints" / "ft-products" / "genft_manifest.json").read_text())
    assert rec.finetune.model_dump() == {
        "run": "ft-products", "name": "ft-products", "task": "sentiment", "dataset": "builtin_products",
        "train_size": 100, "train_limit": 16, "method": "lora", "icl_shots": 0, "icl_demos": None, "seed": 42,
        "num_processes": 1, "recipe_hash": job.recipe_hash, "replicate_hash": job.replicate_hash,
        "weights_sha256": man["weights_sha256"], "weight_deviation": 2.0e-4}
    assert rec.checkpoint.identity["weights"] == man["weights_sha256"] == weights_fingerprint(out / "checkpoints"
                                                                                              / "ft-products")
    assert rec.n == 4 and rec.domain == "in" and rec.base == "tiny" and rec.demo_seed is None
    assert rec.doc_ids == [0, 1, 2, 3] and all(o in ("positive", "negative") for o in rec.outputs)
    assert "acc_first" in rec.metrics and not any("stderr" in k or "," in k for k in rec.metrics)
    assert rec.score == pytest.approx(sum(rec.items["acc_first"]) / 4)
    # the predicted label of each item is the one its first-token score picked
    assert [float(o == g) for o, g in zip(rec.outputs, [next(lab for lab in ("positive", "negative")
                                                               if rec.items[f"gold_{lab}"][i]) for i in range(4)])] \
        == rec.items["acc_first"]
    assert rec.majority_rate >= 0.5
    assert rec.provenance.backend == "hf" and rec.provenance.lm_eval and len(rec.provenance.data_sha256) == 64
    gen = next(x for x in cells if x.task == "summary" and x.model == "tiny")
    assert gen.majority_rate is None and len(gen.items["rougeL"]) == 2 and gen.finetune is None
    assert len(gen.outputs) == 2 and all(isinstance(o, str) for o in gen.outputs)
    assert (out / "cells" / f"{rec.key}.samples.jsonl").is_file()
    assert set(gsuite.load_manifests(out)) == {"ft-products"}
    plan_json = json.loads((out / "plans" / "t.json").read_text())
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
    assert len(load_cells(path)) == 9

    # a new limit for generation: only the generation cells (3) run again
    monkeypatch.undo()
    c = Counter(monkeypatch)
    edit(path, lambda d: d["eval"]["limit"].update(generation=3))
    assert run(path) == 0
    assert sorted(t for t, _, _ in c.evaluated) == ["genft_summary_builtin_sports", "genft_summary_builtin_sports",
                                                    "genft_summary_builtin_sports_p2"]
    assert all(lim == 3 for _, _, lim in c.evaluated)
    assert all(r.n == 3 for r in load_cells(path) if r.task == "summary")

    # a new learning rate: the fine-tune and its cells run again, the base model's cells do not
    monkeypatch.undo()
    c = Counter(monkeypatch)
    trainer = FakeTrainer()
    before = snapshot(out)
    edit(path, lambda d: d["finetune"][0]["trainer"].update(learning_rate=1.0e-4))
    assert run(path, trainer) == 0
    assert trainer.calls == ["ft-products"] and c.loads == 1 and len(c.evaluated) == 5
    cells = load_cells(path)
    assert len(cells) == 9  # the plan's cells only: the old fine-tune's 5 cells dropped out
    assert {r.finetune.weight_deviation for r in cells if r.finetune} == {1.0e-4}
    base_keys = {r.key for r in cells if r.model == "tiny"}
    assert all(before[f"{k}.json"] == snapshot(out)[f"{k}.json"] for k in base_keys)


def test_retrained_weights_are_evaluated_again(tmp_path, builtin_data, monkeypatch):
    """The same recipe trained again to other weights (a GPU's nondeterminism, a changed library) is another
    checkpoint: its cells are never reused.  The same weights again: nothing runs."""
    path = make_suite(tmp_path, builtin_data, test_sets=["builtin_products"], shots={"classification": [0]})
    ck = tmp_path / "out" / "checkpoints" / "ft-products"
    assert run(path, FakeTrainer(noise=0)) == 0
    first = {r.model: r for r in load_cells(path)}
    shutil.rmtree(ck)  # retrain, deterministically: the same weights
    c = Counter(monkeypatch)
    assert run(path, FakeTrainer(noise=0)) == 0
    assert c.loads == 0 and {r.model: r.key for r in load_cells(path)} == {m: r.key for m, r in first.items()}
    shutil.rmtree(ck)  # retrain to other weights
    monkeypatch.undo()
    c = Counter(monkeypatch)
    assert run(path, FakeTrainer(noise=1)) == 0
    assert c.loads == 1 and c.evaluated == [("genft_sentiment_builtin_products", 0, 4)]
    again = {r.model: r for r in load_cells(path)}
    assert again["tiny"].key == first["tiny"].key
    assert again["ft-products"].key != first["ft-products"].key
    assert again["ft-products"].finetune.recipe_hash == first["ft-products"].finetune.recipe_hash
    assert again["ft-products"].finetune.weights_sha256 != first["ft-products"].finetune.weights_sha256


def test_device_dtype_and_backend_are_in_the_key(tmp_path, builtin_data, monkeypatch):
    path = make_suite(tmp_path, builtin_data, finetune=False, test_sets=["builtin_products"],
                      shots={"classification": [0]})
    assert run(path) == 0
    (first,) = load_cells(path)
    assert first.provenance.dtype == "float32" and first.material["device"] == "cpu"
    # another device (a GPU, faked here): every cell is to run again, under another key
    monkeypatch.setattr(observe, "device_identity", lambda device: "cuda:NVIDIA H200")
    p = plan(path)
    assert [c.done for c in p.cells] == [False] and p.cells[0].key != first.key
    monkeypatch.undo()
    # another dtype, then another backend: evaluated again, each under its own key, the old cell kept
    dtype = "float16" if cpu_bf16_missing() else "bfloat16"  # bf16 is refused on a CPU without it
    for change in ({"models": {"tiny": {"model": "tiny", "dtype": dtype}}}, {"eval": {"backend": "genft-hf"}}):
        c = Counter(monkeypatch)
        edit(path, lambda d: [d[k].update(v) for k, v in change.items()])
        assert run(path) == 0 and c.loads == 1 and len(c.evaluated) == 1
        (rec,) = load_cells(path)
        assert rec.key != first.key and (tmp_path / "out" / "cells" / f"{first.key}.json").is_file()
        monkeypatch.undo()
    assert rec.provenance.dtype == dtype and rec.provenance.backend == "genft-hf"


def test_bf16_refused_on_a_cpu_without_it(tmp_path, builtin_data, monkeypatch, capsys):
    """A suite asking for bf16 evaluation or bf16 training on a CPU without native bf16 stops before it writes
    anything, naming the key; float32 suites run there as before."""
    import platform

    import torch

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    path = make_suite(tmp_path, builtin_data)
    gsuite.load_suite(path)  # valid: the refusal is about this machine, not the file
    edit(path, lambda d: d["models"]["tiny"].update(dtype="bfloat16"))
    for argv in (["suite", "run", str(path), "--dry-run"], ["suite", "run", str(path)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "models.tiny.dtype: bf16 on this CPU is refused" in err and "AVX512-BF16" in err, err
    edit(path, lambda d: (d["models"]["tiny"].pop("dtype"), d["finetune"][0]["trainer"].update(bf16=True)))
    assert cli_main(["suite", "run", str(path)]) == 2
    assert "finetune[0] (ft-products): bf16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    edit(path, lambda d: d["finetune"][0]["trainer"].pop("bf16"))
    assert run(path, trainer=FakeTrainer()) == 0


def test_a_truncated_or_foreign_cell_file_is_named_and_run_again(tmp_path, builtin_data, monkeypatch, capsys):
    path = make_suite(tmp_path, builtin_data, finetune=False, test_sets=["builtin_products"],
                      shots={"classification": [0, 1]})
    assert run(path) == 0
    recs = {r.shots: r for r in load_cells(path)}
    cell = tmp_path / "out" / "cells" / f"{recs[0].key}.json"
    good = cell.read_bytes()
    cell.write_bytes(good[: len(good) // 2])  # a torn write (a copy cut short, a full disk)
    with pytest.raises(store.StoreError, match=str(cell)):  # reading never skips it silently
        load_cells(path)
    assert cli_main(["suite", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cells: 2 (1 done, 1 to run)" in out and f"not counted, will be re-run: {cell}" in out
    c = Counter(monkeypatch)
    assert run(path) == 0 and c.evaluated == [("genft_sentiment_builtin_products", 0, 4)]
    redone, old = json.loads(cell.read_text()), json.loads(good)
    assert [redone[k] for k in ("key", "items", "outputs", "metrics")] == [old[k] for k in ("key", "items", "outputs",
                                                                                           "metrics")]
    monkeypatch.undo()
    # a record under another cell's name, and a record missing items, are not done either
    other = tmp_path / "out" / "cells" / f"{recs[1].key}.json"
    cell.write_bytes(other.read_bytes())
    rec = json.loads(good)
    rec["items"]["acc_first"] = rec["items"]["acc_first"][:-1]
    p = plan(path)
    assert [c.problem is not None for c in p.cells if c.shots == 0] == [True] and "holds the record of cell" in \
        p.cells[0].problem
    cell.write_text(json.dumps(rec))
    assert "items of the wrong length" in plan(path).cells[0].problem


_KILL_SCRIPT = """
import os, sys
os.environ["OMP_NUM_THREADS"] = "1"
import torch; torch.set_num_threads(1)
import json
from genft import suite as gsuite
from genft.suite import store
from genft.suite.run import run_suite
real = store.write_json
count = [0]
def write(path, obj):
    if path.name.endswith(".json") and path.parent.name == "cells":
        count[0] += 1
        if count[0] == 3:  # the 3rd cell: evaluated, samples written, its record half-written: die like kill -9
            data = json.dumps(obj).encode()
            path.with_name("." + path.name + ".xyz.tmp").write_bytes(data[: len(data) // 2])
            os._exit(9)
    return real(path, obj)
store.write_json = write
sys.exit(run_suite(sys.argv[1]))
"""


def test_resume_after_kill_mid_cell(tmp_path, builtin_data, monkeypatch):
    path = make_suite(tmp_path, builtin_data, finetune=False)
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
    ref = make_suite(tmp_path / "ref", builtin_data, out=tmp_path / "ref-out", finetune=False)
    assert run(ref) == 0
    resumed = {r.key: (r.metrics, r.items, r.outputs) for r in load_cells(path)}
    clean = {r.key: (r.metrics, r.items, r.outputs) for r in load_cells(ref)}
    assert resumed == clean and len(clean) == 3


def test_random_demo_cells(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, finetune=False, demos="both", demo_seeds=[1, 2],
                      test_sets=["builtin_products"], shots={"classification": [0, 2]})
    p = plan(path)
    assert sorted(((c.shots, c.demo_seed) for c in p.cells), key=str) == [(0, None), (2, 1), (2, 2), (2, None)]
    assert run(path) == 0
    cells = {(r.shots, r.demo_seed): r for r in load_cells(path)}
    assert len(cells) == 4 and cells[(2, 1)].key != cells[(2, 2)].key
    ctx = lambda r: [json.loads(x)["arguments"] for x in  # noqa: E731
                     (tmp_path / "out" / "cells" / f"{r.key}.samples.jsonl").read_text().splitlines()]
    assert ctx(cells[(2, 1)]) != ctx(cells[(2, None)])  # seeded random demos differ from the first k
    # the record says which demonstrations every item got: the first k's targets, none, or unknown (random)
    demos = [d["label"] for d in gdata_load("sentiment", "builtin_products", builtin_data)[:2]]
    assert cells[(2, None)].demo_targets == demos and cells[(0, None)].demo_targets == []
    assert cells[(2, 1)].demo_targets is None


def gdata_load(task, dataset, root):
    from genft.data import load_split

    return load_split(task, dataset, "demos", root)


def test_group_shots_one_call_per_shot_count(tmp_path, builtin_data, monkeypatch):
    calls = []
    real = harness.evaluate
    monkeypatch.setattr(harness, "evaluate", lambda lm, tasks, **k: calls.append(list(tasks)) or real(lm, tasks, **k))
    path = make_suite(tmp_path, builtin_data, finetune=False, group="shots",
                      test_sets=["builtin_products", "builtin_restaurants"], shots={"classification": [0, 1]})
    assert run(path) == 0
    assert sorted(map(sorted, calls)) == [["genft_sentiment_builtin_products", "genft_sentiment_builtin_restaurants"]] * 2
    cells = load_cells(path)
    assert len(cells) == 4 and all(c.provenance.wall_s_shared_by == 2 and c.n == 4 for c in cells)


@pytest.mark.skipif(not (REPO / "finetune" / "sft.py").is_file(), reason="finetune/sft.py not there")
def test_real_trainer_agrees_on_the_config_hash(tmp_path, builtin_data):
    """The real finetune/sft.py subprocess (tiny model, one step): its manifest's hash is the suite's."""
    path = make_suite(tmp_path, builtin_data, test_sets=["builtin_products"], shots={"classification": [0]})
    edit(path, lambda d: d.update(threads=1))
    lines: list[str] = []
    assert run_suite(path, log=lines.append) == 0, "\n".join(lines[-30:])
    man = gsuite.load_manifests(tmp_path / "out")["ft-products"]
    job = plan(path).jobs[0]
    assert job.status == "done" and man.config_hash == job.recipe_hash and man.replicate_hash == job.replicate_hash
    assert man.weights_sha256 == weights_fingerprint(tmp_path / "out" / "checkpoints" / "ft-products")
    assert man.config["num_processes"] == 1 and man.device.world_size == 1
    assert job.manifest == man  # the planner reads the manifest the real trainer wrote
    assert (tmp_path / "out" / "configs" / "ft-products.yaml").is_file()
    assert any("step 1/1" in x for x in lines)
    cells = load_cells(path)
    assert len(cells) == 2 and {r.model for r in cells} == {"tiny", "ft-products"}
    ft = next(r for r in cells if r.finetune)
    assert ft.finetune.weight_deviation > 0 and ft.finetune.weights_sha256 == man.weights_sha256
    assert ft.finetune.weight_deviation == man.weight_deviation.mean_abs_diff


def test_runs_differing_in_a_hyper_parameter_are_two_models_in_the_report(tmp_path, builtin_data):
    """Replicates are exactly the checkpoints of one recipe (the seedless recipe hash): two runs that differ
    only in learning rate are two models; two seeds of one recipe are one model with two replicates."""
    from genft.report import SuiteData, write_report

    path = make_suite(tmp_path, builtin_data, test_sets=["builtin_products"], shots={"classification": [0]})
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-lr", "trainer": {
        **d["finetune"][0]["trainer"], "learning_rate": 1.0e-4}}))
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-rep", "seeds": [1, 2]}))
    assert run(path, FakeTrainer()) == 0
    records = load_cells(path)
    assert len(records) == 5  # the base model and four checkpoints, one cell each
    s = SuiteData("t", records)
    groups = sorted(sorted(g.runs) for g in s.groups.values() if not g.is_base)
    assert groups == [["ft-lr"], ["ft-products", "ft-rep-seed1", "ft-rep-seed2"]]
    md = write_report(path, out_dir=tmp_path / "reports").read_text()
    assert "×3 seeds" in md


# ---------------------------------------------------------------- what a recipe hash and a cell key follow


def _copy_data(builtin_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(builtin_data, root)
    return root


def _edit_first_item(path: Path, field: str) -> bytes:
    """Change the first item's `field` (a valid item still, and a longer file); returns the file's old bytes."""
    old = path.read_bytes()
    lines = old.decode().splitlines()
    item = json.loads(lines[0])
    item[field] += " (edited)"
    path.write_text("\n".join([json.dumps(item), *lines[1:]]) + "\n")
    return old


def test_the_recipe_hash_follows_the_training_data(tmp_path, builtin_data):
    """One item of the training file changed: another recipe (and replicate) hash; the file restored: the same
    hash again.  An FTICL run's hash follows its demonstration pool too."""
    root = _copy_data(builtin_data, tmp_path)
    path = make_suite(tmp_path, root)
    edit(path, lambda d: d["finetune"].append({**d["finetune"][0], "name": "ft-icl", "icl_shots": 1}))

    def hashes():
        return {j.run: (j.recipe_hash, j.replicate_hash) for j in plan(path).jobs}

    first = hashes()
    folder = root / "sentiment" / "builtin_products"
    old = _edit_first_item(folder / "train_100.jsonl", "text")
    changed = hashes()
    for run in ("ft-products", "ft-icl"):
        assert changed[run][0] != first[run][0] and changed[run][1] != first[run][1], run
    (folder / "train_100.jsonl").write_bytes(old)
    assert hashes() == first
    old = _edit_first_item(folder / "demos.jsonl", "text")
    changed = hashes()
    assert changed["ft-icl"] != first["ft-icl"] and changed["ft-products"] == first["ft-products"]
    (folder / "demos.jsonl").write_bytes(old)
    assert hashes() == first


def test_the_cell_key_follows_the_test_and_demo_files_and_the_harness(tmp_path, builtin_data, monkeypatch):
    """A changed test file: its cells run again; a changed demonstration pool: only its k-shot cells; a changed
    task file of the harness: that task's cells only; restored: the stored cells count again."""
    root = _copy_data(builtin_data, tmp_path)
    path = make_suite(tmp_path, root, finetune=False, test_sets=["builtin_products", "builtin_restaurants"])
    assert run(path) == 0
    cells = {(r.dataset, r.shots): r.key for r in load_cells(path)}
    assert len(cells) == 4

    def todo():
        return sorted((c.dataset, c.shots) for c in plan(path).cells if not c.done)

    assert todo() == []
    folder = root / "sentiment" / "builtin_products"
    old = _edit_first_item(folder / "test.jsonl", "text")
    assert todo() == [("builtin_products", 0), ("builtin_products", 1)]
    (folder / "test.jsonl").write_bytes(old)
    assert todo() == []
    old = _edit_first_item(folder / "demos.jsonl", "text")
    assert todo() == [("builtin_products", 1)]
    (folder / "demos.jsonl").write_bytes(old)
    assert todo() == [] and {(c.dataset, c.shots): c.key for c in plan(path).cells} == cells
    # the harness: a copy of harness_tasks with one task's file changed
    tasks = tmp_path / "harness_tasks"
    shutil.copytree(harness.tasks_dir(), tasks)
    monkeypatch.setattr(observe, "tasks_dir", lambda: tasks)
    assert todo() == []
    task_file = tasks / "sentiment" / "genft_sentiment_builtin_restaurants.yaml"
    task_file.write_text(task_file.read_text() + "# edited\n")
    assert todo() == [("builtin_restaurants", 0), ("builtin_restaurants", 1)]
    (tasks / "utils.py").write_text((tasks / "utils.py").read_text() + "# edited\n")
    assert len(todo()) == 4  # the loader and scorer of every task
