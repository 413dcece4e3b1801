"""Staged evaluation (eval.stages): cells take their test items in a seeded fixed order, stage by stage; the
stop decision passed to run_suite stops the cells it names, the others run to the end of their test set (or
limit); only a stage's new items are evaluated; records say how many items they hold and why they stopped;
a killed run resumes to the same records as an uninterrupted one (tiny model, builtin data)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genft import harness, suite as gsuite
from genft.cli import main as cli_main
from genft.suite import cluster, store
from genft.suite import snapshot as gsnapshot
from genft.suite.run import run_suite
from genft.suite.stages import item_order
from genft.suite.units import run_unit

TESTS = Path(__file__).resolve().parent
ORDER = item_order(0, 100)  # the builtin test sets hold 100 items
STEP = 40


def make_suite(tmp: Path, builtin_data: Path, stages: dict | None, name: str = "suite", **eval_overrides) -> Path:
    ev = {"test_sets": ["builtin_products", "builtin_sports"], "shots": {"classification": [0, 1], "generation": [0]},
          "limit": {"generation": 2}, "backend": "hf", "batch_size": 8, "group": "shots", **eval_overrides}
    if stages is not None:
        ev["stages"] = stages
    doc = {"name": "st", "data": {"source": "builtin", "data_dir": str(builtin_data)},
           "models": {"tiny": {"model": "tiny"}}, "eval": ev, "output": str(tmp / f"{name}-out")}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Spy:
    """Records each harness.evaluate call: (task name, shots, the doc ids asked for or None)."""

    def __init__(self, monkeypatch, forbid: bool = False):
        self.calls: list[tuple] = []
        real = harness.evaluate

        def evaluate(lm, tasks, num_fewshot=0, samples=None, **k):
            if forbid:
                raise AssertionError("an evaluation ran")
            for t in tasks:
                self.calls.append((t, num_fewshot, None if samples is None else tuple(samples[t])))
            return real(lm, tasks, num_fewshot=num_fewshot, samples=samples, **k)

        monkeypatch.setattr(harness, "evaluate", evaluate)

    def asked(self, task: str, shots: int) -> list[tuple]:
        return [ids for t, k, ids in self.calls if t == task and k == shots]


def stop_one_shot(records):
    """The stop decision of these tests: the 1-shot sentiment cell may stop (after any stage)."""
    return {r.key: "1-shot is decided" for r in records if r.task == "sentiment" and r.shots == 1}


def stop_resume(records):
    """For the kill test: the 2-shot cell stops after its first stage, the 1-shot one once it holds 80."""
    return {r.key: f"{r.shots}-shot decided at {r.n}" for r in records
            if r.task == "sentiment" and (r.shots == 2 or (r.shots == 1 and r.n >= 80))}


def by_cell(path: Path) -> dict[tuple, store.CellRecord]:
    return {(r.task, r.shots): r for r in store.load_finished(gsuite.output_of(path))[0]}


def snapshot(path: Path) -> dict[str, bytes]:
    d = gsuite.output_of(path) / "cells"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def content(rec: store.CellRecord) -> tuple:
    return (rec.key, rec.n, rec.doc_ids, rec.items, rec.outputs, rec.metrics, rec.stages)


def test_a_staged_suite_stops_the_named_cells_and_runs_the_others_to_the_end(tmp_path, builtin_data, monkeypatch):
    path = make_suite(tmp_path, builtin_data, {"step": STEP, "seed": 0})
    seen: list[dict] = []

    def decide(records):
        seen.append({(r.task, r.shots): (r.n, r.stages and r.stages.stopped) for r in records})
        return stop_one_shot(records)

    spy = Spy(monkeypatch)
    assert run_suite(path, decide=decide, log=lambda *_: None) == 0
    cells = by_cell(path)
    zero, one, gen = cells[("sentiment", 0)], cells[("sentiment", 1)], cells[("summary", 0)]
    # what each record holds, of how many, and why it stopped
    assert (zero.n, zero.stages.stage, zero.stages.of, zero.stages.stopped) == (100, 3, 100, "exhausted")
    assert (one.n, one.stages.stage, one.stages.stopped, one.stages.why) == (40, 1, "decided", "1-shot is decided")
    assert (gen.n, gen.stages.stage, gen.stages.stopped, gen.limit) == (2, 1, "limit", 2)
    assert zero.doc_ids == list(ORDER) and one.doc_ids == list(ORDER[:40]) and gen.doc_ids == list(ORDER[:2])
    assert zero.material["stages"] == {"seed": 0, "step": STEP}
    # stage 1 of every cell, a decision, stage 2 of the cells still running, a decision, stage 3, and a last
    # decision on the finished records (a cell it stopped earlier would run on, were it no longer named)
    assert seen == [{("sentiment", 0): (40, None), ("sentiment", 1): (40, None), ("summary", 0): (2, "limit")},
                    {("sentiment", 0): (80, None), ("sentiment", 1): (40, "decided"), ("summary", 0): (2, "limit")},
                    {("sentiment", 0): (100, "exhausted"), ("sentiment", 1): (40, "decided"),
                     ("summary", 0): (2, "limit")}]
    # only each stage's new items were evaluated
    name = "genft_sentiment_builtin_products"
    assert spy.asked(name, 0) == [tuple(sorted(ORDER[:40])), tuple(sorted(ORDER[40:80])), tuple(sorted(ORDER[80:]))]
    assert spy.asked(name, 1) == [tuple(sorted(ORDER[:40]))]
    lines = [json.loads(x) for x in (path.parent / "suite-out" / "cells" / f"{zero.key}.samples.jsonl").read_text()
             .splitlines()]
    assert [s["doc_id"] for s in lines] == list(ORDER)

    # the same items as an unstaged run scores them, item by item (another key: the order is in it)
    ref = make_suite(tmp_path, builtin_data, None, name="ref")
    assert run_suite(ref, log=lambda *_: None) == 0
    plain = by_cell(ref)
    # a limit takes the first `limit` items of the order, not of the file
    assert plain[("summary", 0)].doc_ids == [0, 1] and gen.doc_ids == list(ORDER[:2])
    for staged in (zero, one):
        full = plain[(staged.task, staged.shots)]
        assert full.key != staged.key and full.stages is None
        pos = {d: i for i, d in enumerate(full.doc_ids)}
        for m, vals in staged.items.items():
            assert vals == [full.items[m][pos[d]] for d in staged.doc_ids], m
        assert staged.outputs == [full.outputs[pos[d]] for d in staged.doc_ids]
    assert zero.metrics == pytest.approx(plain[("sentiment", 0)].metrics, abs=1e-12)
    ref_file = tmp_path / "ref-out" / "cells" / f"{plain[('sentiment', 0)].key}.samples.jsonl"
    ref_lines = {json.loads(x)["doc_id"]: json.loads(x) for x in ref_file.read_text().splitlines()}
    assert all(s["doc"] == ref_lines[s["doc_id"]]["doc"] and s["arguments"] == ref_lines[s["doc_id"]]["arguments"]
               for s in lines)

    # finished: a re-run evaluates nothing and touches no file
    before = snapshot(path)
    monkeypatch.undo()
    Spy(monkeypatch, forbid=True)
    assert run_suite(path, decide=decide, log=lambda *_: None) == 0
    assert snapshot(path) == before

    # stop: exhausted continues the decided cell from its 40 items; the others are finished already
    monkeypatch.undo()
    spy = Spy(monkeypatch)
    doc = yaml.safe_load(path.read_text())
    doc["eval"]["stages"]["stop"] = "exhausted"
    path.write_text(yaml.safe_dump(doc))
    assert run_suite(path, decide=decide, log=lambda *_: None) == 0
    assert spy.calls == [(name, 1, tuple(sorted(ORDER[40:80]))), (name, 1, tuple(sorted(ORDER[80:])))]
    again = by_cell(path)
    assert (again[("sentiment", 1)].n, again[("sentiment", 1)].stages.stopped) == (100, "exhausted")
    assert again[("sentiment", 1)].key == one.key and again[("sentiment", 1)].items["acc"][:40] == one.items["acc"]
    assert content(again[("sentiment", 0)]) == content(zero)


def test_a_cell_stopped_by_a_decision_runs_on_when_a_later_decision_no_longer_names_it(tmp_path, builtin_data,
                                                                                        monkeypatch):
    """Evidence that arrives later (another fine-tune, a model found not to take effect) can undo the verdict a
    cell stopped for: the next decision does not name it, and it continues from the items it holds."""
    path = make_suite(tmp_path, builtin_data, {"step": STEP, "seed": 0})
    calls: list[dict] = []

    def decide(records):  # the 1-shot cell is decided after stage 1 only
        calls.append({(r.task, r.shots): (r.n, r.stages.stopped) for r in records})
        return stop_one_shot(records) if len(calls) == 1 else {}

    spy = Spy(monkeypatch)
    logged: list[str] = []
    assert run_suite(path, decide=decide, log=logged.append) == 0
    one = by_cell(path)[("sentiment", 1)]
    assert (one.n, one.stages.stage, one.stages.stopped, one.stages.why) == (100, 3, "exhausted", None)
    assert one.doc_ids == list(ORDER)
    name = "genft_sentiment_builtin_products"
    # stage 1, stopped; the next decision reopens it: stages 2 and 3, each item evaluated once
    assert spy.asked(name, 1) == [tuple(sorted(ORDER[:40])), tuple(sorted(ORDER[40:80])), tuple(sorted(ORDER[80:]))]
    assert calls[1][("sentiment", 1)] == (40, "decided") and calls[2][("sentiment", 1)] == (80, None)
    assert any(x.startswith("runs on after 40 of 100 items") and "sentiment" in x for x in logged)
    # the same records as a run that never stopped it
    ref = make_suite(tmp_path, builtin_data, {"step": STEP, "seed": 0}, name="ref")
    assert run_suite(ref, decide=lambda records: {}, log=lambda *_: None) == 0
    assert content(by_cell(ref)[("sentiment", 1)])[1:] == content(one)[1:]


def test_without_a_decision_staged_cells_run_to_the_end(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, {"step": 60, "seed": 3}, test_sets=["builtin_products"],
                      shots={"classification": [0]})
    logged: list[str] = []
    assert run_suite(path, log=logged.append) == 0
    (rec,) = by_cell(path).values()
    assert (rec.n, rec.stages.stage, rec.stages.stopped) == (100, 2, "exhausted")
    assert rec.doc_ids == list(item_order(3, 100)) and rec.material["stages"] == {"seed": 3, "step": 60}
    assert any("given no stop decision" in line for line in logged)


def test_a_round_that_stores_nothing_ends_the_run_unfinished(tmp_path, builtin_data, monkeypatch):
    path = make_suite(tmp_path, builtin_data, {"step": 60}, test_sets=["builtin_products"],
                      shots={"classification": [0]})
    spy = Spy(monkeypatch)
    monkeypatch.setattr(store, "write_cell", lambda *a, **k: None)  # a store that keeps nothing
    logged: list[str] = []
    assert run_suite(path, log=logged.append) == 1
    assert len(spy.calls) == 1 and any("1 cells are still not finished" in line for line in logged)


_KILL_SCRIPT = """
import os, sys
os.environ["OMP_NUM_THREADS"] = "1"
import torch; torch.set_num_threads(1)
import json
sys.path.insert(0, sys.argv[2])
from test_suite_stages import stop_resume
from genft import suite as gsuite
from genft.suite import store
from genft.suite.run import run_suite
real = store.write_json
count = [0]
def write(path, obj):
    if path.name.endswith(".json") and path.parent.name == "cells":
        count[0] += 1
        if count[0] == int(sys.argv[3]):  # this record half-written (its samples already grown): die like kill -9
            data = json.dumps(obj).encode()
            path.with_name("." + path.name + ".xyz.tmp").write_bytes(data[: len(data) // 2])
            os._exit(9)
    return real(path, obj)
store.write_json = write
sys.exit(run_suite(sys.argv[1], decide=stop_resume, log=lambda *_: None))
"""


def test_a_killed_staged_run_resumes_to_the_records_of_an_uninterrupted_one(tmp_path, builtin_data):
    kw = dict(test_sets=["builtin_products"], shots={"classification": [0, 1, 2]}, group="cell")
    path = make_suite(tmp_path, builtin_data, {"step": STEP, "seed": 0}, **kw)
    # record writes: stage 1 of the 0/1/2-shot cells (1-3), the 2-shot cell stopped (4), stage 2 of the
    # 0-shot (5) and 1-shot (6) cells: die in the 6th, with the 0-shot cell a stage ahead of the 1-shot one
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(path), str(TESTS), "6"], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    out = gsuite.output_of(path)
    p = gsuite.read_plan(gsuite.load_suite(path))
    assert sorted((c.shots, c.held, c.stopped) for c in p.cells) == [(0, 80, None), (1, 40, None), (2, 40, "decided")]
    assert any(x.name.startswith(".") for x in (out / "cells").iterdir())  # the torn temporary file
    samples_1 = out / "cells" / f"{next(c.key for c in p.cells if c.shots == 1)}.samples.jsonl"
    assert len(samples_1.read_text().splitlines()) == 80  # grown before the record was (half) written

    assert run_suite(path, decide=stop_resume, log=lambda *_: None) == 0
    resumed = by_cell(path)
    ref = make_suite(tmp_path, builtin_data, {"step": STEP, "seed": 0}, name="ref", **kw)
    assert run_suite(ref, decide=stop_resume, log=lambda *_: None) == 0
    clean = by_cell(ref)
    assert {k: content(r) for k, r in resumed.items()} == {k: content(r) for k, r in clean.items()}
    assert {k: (r.n, r.stages.stopped) for k, r in clean.items()} == {
        ("sentiment", 0): (100, "exhausted"), ("sentiment", 1): (80, "decided"), ("sentiment", 2): (40, "decided")}
    assert not any(x.name.startswith(".") for x in (out / "cells").iterdir())
    assert len(samples_1.read_text().splitlines()) == 80


class InProcess(cluster.ClusterExecutor):
    """A cluster engine that runs each unit here, in order (what a Ray or Slurm worker does)."""

    def run_units(self, suite_path, units, output, log):
        for unit in units:
            self.unit_fn(str(suite_path), unit, log=log)
        return []


def test_a_cluster_engine_runs_the_same_stages(tmp_path, builtin_data):
    kw = dict(test_sets=["builtin_products"], shots={"classification": [0, 1]})
    local = make_suite(tmp_path, builtin_data, {"step": 50, "seed": 1}, name="local", **kw)
    elsewhere = make_suite(tmp_path, builtin_data, {"step": 50, "seed": 1}, name="elsewhere", **kw)
    assert run_suite(local, decide=stop_one_shot, log=lambda *_: None) == 0
    engine = InProcess(gsuite.load_suite(elsewhere).executor, unit_fn=run_unit)
    assert run_suite(elsewhere, executor=engine, decide=stop_one_shot, log=lambda *_: None) == 0
    a, b = by_cell(local), by_cell(elsewhere)
    assert {k: content(r) for k, r in a.items()} == {k: content(r) for k, r in b.items()}
    assert {k: (r.n, r.stages.stopped) for k, r in b.items()} == {("sentiment", 0): (100, "exhausted"),
                                                                  ("sentiment", 1): (50, "decided")}


def test_stages_keys_are_documented_and_checked(tmp_path, builtin_data, capsys):
    assert cli_main(["suite", "keys"]) == 0
    out = capsys.readouterr().out
    assert "  stages: opt-in" in out and "    step: items per stage" in out and "    stop: decided" in out
    path = make_suite(tmp_path, builtin_data, {"step": 0})
    with pytest.raises(gsuite.SuiteError, match=r"suite\.yaml:\d+: eval\.stages\.step: .*greater than or equal to 1"):
        gsuite.load_suite(path)
    path = make_suite(tmp_path, builtin_data, {"step": 10, "stop": "never"})
    with pytest.raises(gsuite.SuiteError, match=r"eval\.stages\.stop: .*'decided' or 'exhausted'"):
        gsuite.load_suite(path)


def _staged_raw(n: int = 8, step: int = 4, of: int = 100, **stages) -> dict:
    """A staged record as the suite writes one (built from the report tests' records)."""
    from report_records import record

    raw = record("sentiment", "builtin_products", "in", correct=[1, 0] * (n // 2)).model_dump(mode="json")
    raw["material"]["stages"] = {"seed": 0, "step": step}
    raw["key"] = store.key_of(raw["material"])
    raw["doc_ids"] = list(item_order(0, of)[:n])
    raw["stages"] = {"seed": 0, "step": step, "stage": -(-n // step), "of": of, "stopped": None, "why": None, **stages}
    return raw


@pytest.mark.parametrize("change, match", [
    (lambda r: r.update(doc_ids=list(range(8))), "not the first 8 items of the order"),
    (lambda r: r["stages"].update(stage=3), "stage 3 of step 4 holds 12 items"),
    (lambda r: r["stages"].update(of=8) or r.update(doc_ids=list(item_order(0, 8))), "stopped must be 'exhausted'"),
    (lambda r: r["stages"].update(stopped="exhausted"), "stopped 'exhausted' but it holds 8 of 100"),
    (lambda r: r["stages"].update(why="because"), "not stopped by a decision"),
    (lambda r: r["stages"].update(step=2, stage=4), "differ from the key material"),
    (lambda r: r.update(stages=None), "the key material is staged"),
])
def test_a_staged_record_is_checked(change, match):
    assert store.CellRecord.model_validate(_staged_raw()).stages.of == 100
    raw = _staged_raw()
    change(raw)
    with pytest.raises(ValueError, match=match):
        store.CellRecord.model_validate(raw)


def test_records_of_version_2_read_as_unstaged_and_stores_check_staged_files(tmp_path):
    raw = _staged_raw()
    del raw["stages"], raw["material"]["stages"]
    raw.update(record_version=2, key=store.key_of(raw["material"]), doc_ids=list(range(8)))
    old = store.CellRecord.model_validate(raw)
    assert old.record_version == 3 and old.stages is None
    store.write_json(store.cell_path(tmp_path, "k1"), {**raw, "record_version": 1})
    with pytest.raises(store.StoreError, match="record_version 1, this genft reads versions 2, 3"):
        store.read_cell(store.cell_path(tmp_path, "k1"))
    store.write_cell(tmp_path, old, b"{}\n" * 8)
    with pytest.raises(store.StoreError, match="not a running staged cell"):
        store.stop_cell(tmp_path, old.key, "why")
    staged = store.CellRecord.model_validate(_staged_raw())
    store.write_cell(tmp_path, staged, b"{}\n" * 7)  # a samples file shorter than the record
    rec, problem = gsnapshot.check_cell(tmp_path, staged.key, 100, staged=True)
    assert rec is None and "fewer than its 8 items" in problem
    store.write_cell(tmp_path, staged, b"{}\n" * 8)
    assert gsnapshot.check_cell(tmp_path, staged.key, 100, staged=True)[0] == staged.sealed()  # the store seals what it writes
    assert "can hold 100 items, the cell has 50" in gsnapshot.check_cell(tmp_path, staged.key, 50, staged=True)[1]
    stopped = store.stop_cell(tmp_path, staged.key, "decided by a test")
    assert (stopped.stages.stopped, stopped.stages.why) == ("decided", "decided by a test")
    assert store.read_cell(store.cell_path(tmp_path, staged.key)) == stopped
