"""Cluster engines: the same suite through a local Ray cluster and through submitit's local executor ends with
the same cells (keys and numbers) as the local executor; a worker killed mid-unit is retried and leaves no
partial cell; a missing engine says what to install.  Real fine-tunes (finetune/sft.py, one step on the tiny
model) and real evaluations, in CI."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from genft import suite as gsuite
from genft.suite import cluster, store
from genft.suite.run import run_suite
from genft.suite.units import Unit, run_unit, units_of

ray = pytest.importorskip("ray")
submitit = pytest.importorskip("submitit")


def make_suite(tmp: Path, builtin_data: Path, **executor) -> Path:
    doc = {
        "name": "c", "threads": 1,
        "data": {"source": "builtin", "data_dir": str(builtin_data)},
        "models": {"tiny": {"model": "tiny"}},
        "finetune": [{"name": "ft", "task": "sentiment", "train_size": 100, "train_limit": 8,
                      "trainer": {"use_peft": True, "learning_rate": 1.0e-3, "max_steps": 1, "max_length": 128,
                                  "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}}],
        "eval": {"test_sets": ["builtin_products", "builtin_sports"], "shots": {"classification": [0, 1],
                 "generation": [0]}, "limit": {"classification": 4, "generation": 2}, "backend": "hf",
                 "batch_size": 4, "group": "cell"},
        "executor": {"retries": 1, **executor},
        "output": str(tmp / "out"),
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cells(path: Path) -> dict[str, tuple]:
    recs, _ = store.load_finished(gsuite.output_of(path))
    return {r.key: (r.checkpoint.id, r.metrics, r.items, r.outputs) for r in recs}


@pytest.fixture(scope="module")
def local_cells(tmp_path_factory, builtin_data):
    path = make_suite(tmp_path_factory.mktemp("local"), builtin_data)
    assert run_suite(path, log=lambda *_: None) == 0
    return cells(path)


def test_units_order_fine_tunes_before_their_evaluations(tmp_path, builtin_data):
    p = gsuite.read_plan(gsuite.load_suite(make_suite(tmp_path, builtin_data)))
    assert units_of(p) == [Unit("finetune", "ft"), Unit("evaluate", "tiny"), Unit("evaluate", "ft", after="ft")]


def test_ray_local_cluster_gives_the_local_executors_cells(tmp_path, builtin_data, local_cells):
    path = make_suite(tmp_path, builtin_data, kind="ray")
    lines: list[str] = []
    rc = run_suite(path, log=lines.append, executor=cluster.RayExecutor(gsuite.load_suite(path).executor,
                                                                               num_cpus=2))
    assert rc == 0, "\n".join(lines[-20:])
    got = cells(path)
    assert len(got) == 6 and got == local_cells  # same keys, same numbers
    assert any("ray: evaluate:ft: 3 cells evaluated" in x for x in lines)


def test_submitit_local_executor_gives_the_local_executors_cells(tmp_path, builtin_data, local_cells):
    path = make_suite(tmp_path, builtin_data, kind="slurm", cluster="local", poll_s=0.5)
    lines: list[str] = []
    assert run_suite(path, log=lines.append) == 0, "\n".join(lines[-20:])
    assert cells(path) == local_cells
    logs = [x for x in lines if x.startswith("slurm: ") and " job " in x]
    assert len(logs) == 3 and all("log " in x and Path(x.rsplit("log ", 1)[1]).parent.is_dir() for x in logs)


_KILLED = []


def killed_once(suite_path: str, unit: Unit, *deps) -> str:
    """A unit that, the first time it evaluates the fine-tuned checkpoint, dies like kill -9 halfway through
    writing its second cell (a torn temporary file left behind)."""
    marker = Path(suite_path).parent / f"killed-{unit.kind}-{unit.checkpoint}"
    if unit.kind == "evaluate" and unit.checkpoint == "ft" and not marker.exists():
        marker.touch()
        real, n = store.write_json, [0]

        def write(path, obj):
            if path.parent.name == "cells":
                n[0] += 1
                if n[0] == 2:
                    data = json.dumps(obj).encode()
                    path.with_name(f".{path.name}.xyz.tmp").write_bytes(data[: len(data) // 2])
                    os._exit(9)
            return real(path, obj)

        store.write_json = write
    return run_unit(suite_path, unit, *deps)


def test_a_worker_killed_mid_unit_is_retried_and_leaves_no_partial_cell(tmp_path, builtin_data, local_cells):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path = make_suite(tmp_path, builtin_data, kind="ray")
    lines: list[str] = []
    ex = cluster.RayExecutor(gsuite.load_suite(path).executor, unit_fn=killed_once, num_cpus=2)
    assert run_suite(path, log=lines.append, executor=ex) == 0, "\n".join(lines[-20:])
    assert (tmp_path / "killed-evaluate-ft").exists()  # it did die once
    assert cells(path) == local_cells
    assert not list((tmp_path / "out").rglob("*.tmp"))


def flaky(suite_path: str, unit: Unit, *deps) -> str:
    marker = Path(suite_path).parent / f"failed-{unit.id.replace(':', '-')}"
    if unit.kind == "finetune" and not marker.exists():
        marker.touch()
        raise RuntimeError("node lost")
    return run_unit(suite_path, unit, *deps)


def test_submitit_resubmits_a_failed_job(tmp_path, builtin_data, local_cells):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path = make_suite(tmp_path, builtin_data, kind="slurm", cluster="local", poll_s=0.5)
    lines: list[str] = []
    ex = cluster.SlurmExecutor(gsuite.load_suite(path).executor, unit_fn=flaky)
    assert run_suite(path, log=lines.append, executor=ex) == 0, "\n".join(lines[-20:])
    assert any("finetune:ft failed (" in x and "submitting it again" in x for x in lines)
    assert cells(path) == local_cells


def test_a_missing_engine_says_what_to_install(tmp_path, builtin_data, monkeypatch):
    real = cluster.importlib.import_module
    monkeypatch.setattr(cluster.importlib, "import_module",
                        lambda name: (_ for _ in ()).throw(ImportError(name)) if name == "ray" else real(name))
    path = make_suite(tmp_path, builtin_data)
    with pytest.raises(gsuite.SuiteError, match=r"pip install 'genft\[ray\]'"):
        run_suite(path, log=lambda *_: None, executor="ray")
