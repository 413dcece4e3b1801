"""The suite's boundaries: the planner is a pure function of (suite, what was read, a store snapshot); every
executor (local, Ray, Slurm) has one interface and `run_suite` drives them alike; the report and
`genft report --cells` import neither torch nor lm-eval."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genft import suite as gsuite
from genft.suite import cluster, observe, planning, snapshot, units
from genft.suite.run import run_suite
from genft.suite.schema import ExecutorSection

from suite_setup import NoTrainer, make_suite

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


# ---------------------------------------------------------------- imports


def test_importing_the_report_loads_neither_torch_nor_lm_eval():
    r = _fresh_python("import genft.report, sys; assert 'torch' not in sys.modules and 'lm_eval' not in "
                      "sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lm_eval'))[:5]")
    assert r.returncode == 0, r.stderr


def test_the_planner_and_the_suites_namespace_load_neither_torch_nor_lm_eval():
    r = _fresh_python("import genft.suite, genft.suite.planning, genft.suite.observe, sys; "
                      "assert 'torch' not in sys.modules and 'lm_eval' not in sys.modules")
    assert r.returncode == 0, r.stderr


def test_report_from_cells_loads_neither_torch_nor_lm_eval_and_rebuilds_the_committed_report(tmp_path):
    evidence = REPO / "reports" / "study-cpu" / "cells.jsonl.gz"
    r = _fresh_python(
        "import sys; from genft.cli import main\n"
        f"rc = main(['report', '--cells', {str(evidence)!r}, '--out-dir', {str(tmp_path)!r}])\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lm_eval'))\n"
        "assert not loaded, loaded[:5]\n")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "study-cpu.md").read_bytes() == (REPO / "reports" / "study-cpu.md").read_bytes()


# ---------------------------------------------------------------- the planner


def test_planning_reads_nothing_and_gives_the_same_plan_twice(tmp_path, builtin_data, monkeypatch):
    suite = gsuite.load_suite(make_suite(tmp_path, builtin_data))
    inputs, snap = observe.observe(suite, provision=True), snapshot.read(suite.output)
    first = planning.plan(suite, inputs, snap)
    data = tmp_path / "data-gone"  # the data and the harness files out of reach: the planner must not need them
    shutil.copytree(builtin_data, data)
    suite = gsuite.load_suite(make_suite(tmp_path, data))
    inputs2 = observe.observe(suite, provision=True)
    shutil.rmtree(data)
    monkeypatch.setenv("GENFT_TASKS_DIR", str(tmp_path / "no-harness-tasks"))
    again = planning.plan(suite, inputs2, snap)
    assert [(c.key, c.done, c.est_s) for c in again.cells] == [(c.key, c.done, c.est_s) for c in first.cells]
    assert planning.plan(suite, inputs2, snap) == again  # same inputs, same snapshot: equal plans
    assert any(c.key for c in first.cells) and not any(c.done for c in first.cells)


def test_the_plan_marks_done_exactly_the_cells_the_snapshot_holds(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, finetune=False, test_sets=["builtin_products"],
                      shots={"classification": [0, 1]})
    suite = gsuite.load_suite(path)
    inputs = observe.observe(suite, provision=True)
    assert not any(c.done for c in planning.plan(suite, inputs, snapshot.EMPTY).cells)
    assert run_suite(path, trainer=NoTrainer(), log=lambda *_: None) == 0
    snap = snapshot.read(suite.output)
    p = planning.plan(suite, inputs, snap)
    assert len(p.cells) == 2 and all(c.done and c.held == c.n and c.wall_s is not None for c in p.cells)
    assert all(isinstance(c.cell, planning.Cell) and not hasattr(c.cell, "done") for c in p.cells)
    kept = {k: v for k, v in snap.items() if k == p.cells[0].key}  # a snapshot without the second cell
    partial = planning.plan(suite, inputs, kept)
    assert [c.done for c in partial.cells] == [True, False] and partial.todo_cells[0].key == p.cells[1].key
    assert planning.plan(suite, inputs, snapshot.EMPTY).cells[0].cell == p.cells[0].cell  # plan data: same cells


def test_a_snapshot_record_under_another_key_is_a_problem_not_a_done_cell(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, finetune=False, test_sets=["builtin_products"],
                      shots={"classification": [0, 1]})
    assert run_suite(path, trainer=NoTrainer(), log=lambda *_: None) == 0
    suite = gsuite.load_suite(path)
    inputs, snap = observe.observe(suite), snapshot.read(suite.output)
    a, b = (c.key for c in planning.plan(suite, inputs, snap).cells)
    swapped = {a: snap[b], b: snap[a]}
    p = planning.plan(suite, inputs, swapped)
    assert not any(c.done for c in p.cells) and all("holds the record of cell" in c.problem for c in p.cells)


# ---------------------------------------------------------------- executors


def test_every_executor_kind_is_an_executor():
    for kind, cls in (("local", units.LocalExecutor), ("ray", cluster.RayExecutor), ("slurm", cluster.SlurmExecutor)):
        ex = cluster.make_executor(ExecutorSection(kind=kind))
        assert isinstance(ex, cls) and isinstance(ex, units.Executor) and ex.here == (kind == "local")


class Recording(units.Executor):
    """An executor of its own: records the rounds' units, does them with the local executor."""

    def __init__(self):
        self.rounds: list[list[str]] = []

    def run(self, suite, p, todo, log):
        self.rounds.append([u.id for u in todo])
        return units.LocalExecutor(NoTrainer()).run(suite, p, todo, log)


def test_run_suite_drives_any_executor_through_the_one_interface(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, finetune=False)
    ex = Recording()
    assert run_suite(path, executor=ex, log=lambda *_: None) == 0
    assert ex.rounds == [["evaluate:tiny"]]
    assert all(c.done for c in gsuite.read_plan(gsuite.load_suite(path)).cells)
    assert run_suite(path, executor=ex, log=lambda *_: None) == 0 and len(ex.rounds) == 1  # nothing left


class Failing(units.Executor):
    def run(self, suite, p, todo, log):
        return [u.id for u in todo]


def test_failed_units_are_reported_and_not_retried_in_the_same_run(tmp_path, builtin_data):
    path = make_suite(tmp_path, builtin_data, finetune=False, stages={"step": 2})
    lines: list[str] = []
    assert run_suite(path, executor=Failing(), log=lines.append) == 1
    assert any("FAILED: evaluate:tiny" in x for x in lines)


def test_an_executor_kind_by_name_replaces_the_suites(tmp_path, builtin_data, monkeypatch):
    seen = []
    monkeypatch.setattr(cluster.RayExecutor, "run_units", lambda self, *a: seen.append(a[1]) or [])
    path = make_suite(tmp_path, builtin_data, finetune=False)
    lines: list[str] = []
    assert run_suite(path, executor="ray", log=lines.append) == 1  # nothing ran: the cells are left
    assert [[u.id for u in x] for x in seen] == [["evaluate:tiny"]]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
