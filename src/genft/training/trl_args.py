"""TRL's own argument classes, built from a validated `FinetuneConfig`: `trl.SFTConfig` for the trainer and
`trl.ModelConfig` for the model, whose LoRA settings `trl.get_peft_config` turns into peft's LoraConfig (as
TRL's trl/scripts/sft.py does).  No setting is copied by hand: every `FinetuneConfig` field named like an
`SFTConfig` or `ModelConfig` field is passed under its name; genft's data settings (`DataArguments`) and its
own run settings (`GENFT_OWN`) are used by genft itself.  What genft fixes or derives (completion-only loss,
no packing, precision from the device, padding-free batches where checked) is in `sft_config`, in one place.

Imports TRL (and so torch): the runner imports this module when it trains, never the planner or the report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from .config import DATA_FIELDS, FIELDS, FinetuneConfig

# FinetuneConfig's settings that neither TRL class has: genft reads them itself (where the data is, how many
# processes and which accelerate config, what to keep, CPU threads, intermediate models)
GENFT_OWN = ("data_dir", "num_processes", "accelerate_config", "keep_checkpoints", "torch_threads", "step_models")


def _names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def partition() -> dict[str, tuple[str, ...]]:
    """FinetuneConfig's fields by who reads them: {"trainer": SFTConfig's, "model": ModelConfig's, "data":
    genft's DataArguments, "genft": genft's own}.  A field in none of them is an error here, not a silently
    dropped setting."""
    from trl import ModelConfig, SFTConfig

    sft, model = _names(SFTConfig), _names(ModelConfig)
    parts = {"trainer": tuple(f for f in FIELDS if f in sft and f not in DATA_FIELDS),
             "model": tuple(f for f in FIELDS if f in model and f not in sft and f not in DATA_FIELDS),
             "data": DATA_FIELDS, "genft": GENFT_OWN}
    placed = {f for fs in parts.values() for f in fs}
    lost = [f for f in FIELDS if f not in placed]
    if lost or len(placed) != sum(map(len, parts.values())):
        raise RuntimeError(f"FinetuneConfig fields that no argument class reads: {lost}; or a field read twice")
    return parts


def model_config(cfg: FinetuneConfig):
    """trl.ModelConfig from the config's model settings (model_name_or_path, dtype, use_peft, lora_*)."""
    from trl import ModelConfig

    args = ModelConfig(**{k: getattr(cfg, k) for k in partition()["model"]})
    # ModelConfig turns a one-module list into its string, which peft reads as a regular expression over the
    # whole module name (matching no module): keep genft's list ("all-linear" stays peft's keyword)
    args.lora_target_modules = cfg.lora_target_modules
    return args


def peft_config(cfg: FinetuneConfig):
    """peft's LoraConfig for a LoRA run (trl.get_peft_config: a causal LM, no bias trained), None otherwise."""
    from trl import get_peft_config

    return get_peft_config(model_config(cfg))


def trainer_values(cfg: FinetuneConfig) -> dict[str, Any]:
    """The config's settings under SFTConfig's names (before genft's fixed and derived ones)."""
    return {k: getattr(cfg, k) for k in partition()["trainer"]}


def sft_config(cfg: FinetuneConfig, out: Path, batching: Mapping, dev: Mapping):
    """trl.SFTConfig: the config's trainer settings, then what genft fixes or derives.  batching: the
    padding-free decision (runner.batching_for); dev: runner.device_settings."""
    from trl import SFTConfig

    flat = bool(batching["padding_free"])
    return SFTConfig(**{
        **trainer_values(cfg),
        "output_dir": str(out),
        # padding-free rows are not cut by TRL (it refuses max_length with them): build_examples already fitted
        # every example into max_length, and the prepared rows are checked against it either way
        "max_length": None if flat else cfg.max_length,
        "padding_free": flat,
        "data_seed": cfg.seed,
        "bf16": dev["bf16"],
        "use_cpu": dev["use_cpu"],
        "save_strategy": "steps",
        "report_to": cfg.report_to or "none",
        "disable_tqdm": True,
        "completion_only_loss": True,
        "packing": False,
        # a flattened batch holds no padding ("non_padding" would skip every EOS where pad = EOS)
        "include_num_input_tokens_seen": "all" if flat else "non_padding",
        "dataset_num_proc": None,
    })
