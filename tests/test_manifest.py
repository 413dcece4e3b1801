"""The fine-tuning manifest contract (genft.training.manifest): no training here (test_finetune.py round-trips a
manifest the real trainer wrote)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from manifests import fake_manifest

from genft import training
from genft.suite import store
from genft.suite.store import StoreError
from genft.training import (MANIFEST, ConfigError, FinetuneConfig, Manifest, ManifestError, read_manifest,
                            training_facts, write_manifest)

REPO = Path(__file__).resolve().parents[1]


def _v2_before_steps(out: Path) -> dict:
    """A version-2 manifest as genft wrote it before `steps`, `device.precision` and
    `training.mixed_precision` existed (finished checkpoints of that time must stay readable)."""
    raw = fake_manifest(out).dump()
    del raw["steps"], raw["device"]["precision"], raw["training"]["mixed_precision"]
    return raw


def test_a_manifest_round_trips_under_genfts_json_names(tmp_path):
    man = fake_manifest(tmp_path, config={"seed": 3, "use_peft": True}, steps={
        "2": {"step": 2, "path": str(tmp_path / "steps" / "step-2"), "weights_sha256": "s" * 64}})
    path = write_manifest(tmp_path, man)
    assert path == tmp_path / MANIFEST
    raw = json.loads(path.read_text())
    assert raw["genft_manifest_version"] == 2 and "manifest_version" not in raw  # the field name checkpoints carry
    assert raw["training"]["loss_curve"] == [[1, 1.0]] and raw["model"]["method"] == "lora"
    back = read_manifest(tmp_path)
    assert back == man == read_manifest(path) and back.dump() == raw
    assert back.steps["2"].weights_sha256 == "s" * 64 and back.missing_steps([1, 2]) == [1]
    assert not list(tmp_path.glob(".*.tmp")), "written through the atomic write"


def test_no_manifest_is_none_and_an_early_version_2_manifest_reads(tmp_path):
    assert read_manifest(tmp_path) is None and read_manifest(tmp_path / "nowhere") is None
    (tmp_path / MANIFEST).write_text(json.dumps(_v2_before_steps(tmp_path)))
    man = read_manifest(tmp_path)
    assert man.steps == {} and man.device.precision is None and man.training.mixed_precision is None


@pytest.mark.parametrize("edit, says", [
    (lambda m: m.pop("genft_manifest_version"), r"no genft_manifest_version .*re-run the fine-tune"),
    (lambda m: m.update(genft_manifest_version=3), r"genft_manifest_version 3; this genft reads manifest version 2"),
    (lambda m: m["training"].pop("tokens_per_s"), r"not a valid fine-tuning manifest: training\.tokens_per_s: "),
    (lambda m: m.update(config_hash=None), r"config_hash: .*delete .* and re-run the fine-tune"),
    (lambda m: m.update(notes="mine"), r"notes: Extra inputs are not permitted"),
])
def test_an_unusable_manifest_is_an_error_naming_the_file(tmp_path, edit, says):
    raw = fake_manifest(tmp_path).dump()
    edit(raw)
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=says) as e:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST) in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_foreign_file_under_the_manifests_name_is_an_error(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ManifestError, match=f"{MANIFEST}.*not .*move {tmp_path} away"):
        read_manifest(tmp_path)


def test_every_reader_names_an_unversioned_manifest(tmp_path):
    """The trainer (resume check), the suite's store and the report all refuse, naming the file."""
    out = tmp_path / "checkpoints" / "ft"
    out.mkdir(parents=True)
    raw = fake_manifest(out).dump()
    del raw["genft_manifest_version"]
    (out / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=f"output_dir: {out / MANIFEST}: no genft_manifest_version"):
        training.output_state(out, "c" * 64, FinetuneConfig())
    with pytest.raises(StoreError, match=f"{out / MANIFEST}: no genft_manifest_version"):
        store.load_manifests(tmp_path)


def test_the_trainer_reads_a_finished_run_from_its_manifest(tmp_path):
    write_manifest(tmp_path, fake_manifest(tmp_path, config_hash="a" * 64, config={"learning_rate": 1.0}))
    assert training.output_state(tmp_path, "a" * 64, FinetuneConfig()) == "done"
    with pytest.raises(ConfigError, match=r"holds a finished run with a different config \(.*learning_rate: 1\.0"):
        training.output_state(tmp_path, "b" * 64, FinetuneConfig())


def test_training_facts_are_the_reports_part_of_the_manifest():
    facts = training_facts(fake_manifest(wall_time_s=60.0, tokens_per_s=None, global_steps=7,
                                         truncation={"demos_dropped": 5, "tokens": 999}))
    assert facts == {"training": {"wall_time_s": 60.0, "tokens_per_s": None, "global_steps": 7},
                     "truncation": {"examples_demos_cut": 0, "demos_dropped": 5, "examples_input_cut": 0,
                                    "input_chars_cut": 0}}


def test_the_manifest_module_imports_no_torch():
    code = ("import sys; import genft.training.manifest, genft.training; "
            "bad = [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_manifest_is_frozen():
    man = fake_manifest()
    with pytest.raises(Exception):
        man.config_hash = "x"
    assert isinstance(Manifest.model_validate(man.dump()), Manifest)
