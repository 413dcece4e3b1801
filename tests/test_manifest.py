"""The fine-tuning manifest contract (genft.training.manifest) and TRL's argument classes built from a config
(genft.training.trl_args): no training here (test_finetune_runs.py round-trips a manifest the real trainer wrote)."""
from __future__ import annotations

import dataclasses
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


# ---------------------------------------------------------------- TRL's argument classes


def test_every_setting_is_read_by_trl_or_by_genft():
    from trl import ModelConfig, SFTConfig

    from genft.training.trl_args import partition

    parts = partition()
    assert sorted(f for fs in parts.values() for f in fs) == sorted(training.FIELDS)
    assert {"learning_rate", "num_train_epochs", "per_device_train_batch_size", "lr_scheduler_type",
            "save_total_limit", "report_to"} <= set(parts["trainer"])
    assert {"use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"} <= set(parts["model"])
    names = {f.name for cls in (SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}
    assert not names & set(parts["genft"]) and not names & set(parts["data"])


def test_sft_config_carries_a_suite_trainer_section(tmp_path):
    """Every trainer setting of a suite's `trainer:` section reaches TRL's SFTConfig under its own name;
    what genft derives (precision from the device, padding-free batches where checked) wins."""
    from genft.training.trl_args import partition, sft_config

    section = {"learning_rate": 3e-4, "num_train_epochs": 1.5, "max_steps": 7, "per_device_train_batch_size": 3,
               "gradient_accumulation_steps": 5, "lr_scheduler_type": "cosine", "warmup_steps": 2,
               "weight_decay": 0.01, "max_length": 200, "seed": 11, "activation_checkpointing": True,
               "logging_steps": 2, "save_steps": 9, "save_total_limit": 4, "run_name": "s/ft", "report_to": "none"}
    cfg = training.config_from_mapping({"task": "sentiment", "model_name_or_path": "tiny", **section}, "suite.yaml")
    cfg.report_to = []  # (validate's normal form of "none")
    dev = {"bf16": False, "use_cpu": True}
    args = sft_config(cfg, tmp_path / "out", {"padding_free": False}, dev)
    for k in partition()["trainer"]:
        if k not in ("output_dir", "report_to", "trust_remote_code", "bf16", "padding_free"):
            assert getattr(args, k) == getattr(cfg, k), k
    assert args.lr_scheduler_type == "cosine" and args.max_length == 200 and args.data_seed == 11
    assert args.output_dir == str(tmp_path / "out") and args.report_to == [] and args.use_cpu is True
    assert args.completion_only_loss is True and args.packing is False and args.padding_free is False
    flat = sft_config(cfg, tmp_path / "out", {"padding_free": True}, dev)
    assert flat.padding_free is True and flat.max_length is None and flat.include_num_input_tokens_seen == "all"


def test_lora_config_from_trls_get_peft_config(tiny_model):
    """trl.get_peft_config builds the LoRA config; a one-module list stays a list (TRL's ModelConfig would make
    it a string, which peft matches against whole module names: no module found)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from genft.training.trl_args import peft_config

    assert peft_config(FinetuneConfig(use_peft=False)) is None
    lora = peft_config(FinetuneConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.1,
                                      lora_target_modules=["q_proj"]))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (4, 8, 0.1, "none")
    assert lora.target_modules == {"q_proj"} and lora.task_type == "CAUSAL_LM"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert peft_config(FinetuneConfig(use_peft=True, lora_target_modules="all-linear")).target_modules == "all-linear"


def test_a_manifest_is_frozen():
    man = fake_manifest()
    with pytest.raises(Exception):
        man.config_hash = "x"
    assert isinstance(Manifest.model_validate(man.dump()), Manifest)


def test_the_recipe_hash_is_pinned():
    """The recipe hash names every trained checkpoint and keys its cells: the same settings keep the same hash
    across refactors (values computed before the manifest and TRL-argument changes).  Parsing settings into
    TRL's SFTConfig instead would change it: SFTConfig types warmup_steps, logging_steps and save_steps as
    floats, and 0 and 0.0 hash differently.  The LoRA values changed once, on purpose, when genft's dropout
    masks replaced peft's (training.dropout: other masks, other weights); a recipe without dropout kept its."""
    cfg = FinetuneConfig(task="sentiment", dataset="amazon", model_name_or_path="tiny", use_peft=True, lora_r=8,
                         lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-3, num_train_epochs=1.0,
                         report_to=["tensorboard"], step_models=[2], num_processes=1)
    files = {"train_2000.jsonl": "a" * 64, "demos.jsonl": "b" * 64}
    assert training.config_hash(cfg, files) == "8544b024a57f6694f45e487dd6bed1d076555e2b43aa9273faebaf03b029542f"
    assert training.config_hash(cfg, files, seed=False) == \
        "14589186d754ff487381e3d357cff5e55cba4ac0a5cbfbc08c09d744582c3392"
    no_dropout = FinetuneConfig(**{**training.config_dict(cfg), "lora_dropout": 0.0})
    assert training.config_hash(no_dropout, files) == \
        "c4ef710b8a34195e30e95813a3bdf3ce8cad323a0a0f4489d89a706969f3ba09"
    assert training.config_hash(FinetuneConfig(), {}) == \
        "3d885e4e56c836598ed7f40a4d96e64284a31228f6c4b44c57dc7272a4822318"
