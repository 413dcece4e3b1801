"""A fine-tuning run's settings: `FinetuneConfig` (TRL's names for the trainer and model, genft's
`DataArguments` for the data), their checks, and the recipe hash that names the trained model."""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import ConfigDict, ValidationError, create_model

from .. import data as gdata
from .. import settings_yaml
from ..files import sha256_file, sha256_json
from ..prompts import PROMPT_IDS, TASKS

RUN_FILE = "genft_run.json"
LOCK_FILE = ".genft_sft.lock"  # sft.py holds it while it trains into the folder
ADAPTER_DIR = "adapter"
ICL_DEMOS = ("fixed", "random")


class ConfigError(ValueError):
    """A bad fine-tuning configuration: the message names the setting (and the file) and what to do."""


class TruncationError(ValueError):
    """An example whose bare template + target + EOS does not fit into max_length."""


# ---------------------------------------------------------------- configuration


@dataclass
class DataArguments:
    """genft's own settings of a fine-tuning run: what it is trained on.  In a suite they are the run's own keys;
    the trainer's and model's settings (TRL's names, the rest of FinetuneConfig) go under its `trainer:`."""

    task: str | None = field(default=None, metadata={"help": "genft task: summary, question, sentiment, paraphrase, nli"})
    dataset: str | None = field(default=None, metadata={"help": "training data set (default: the task's training set)"})
    train_size: int = field(default=2000, metadata={"help": "training file train_<N>.jsonl of the data set"})
    train_limit: int | None = field(default=None, metadata={"help": "use only the first N items of that file"})
    icl_shots: int = field(default=0, metadata={"help": "FTICL: demonstrations in every training prompt (0 = plain FT)"})
    icl_demos: str = field(
        default="fixed",
        metadata={"help": "fixed: the first k of the data set's demo pool for every example (the study); "
                  "random: k items drawn per example (seeded) from the training items, never the example itself"},
    )
    prompt: int = field(default=1, metadata={"help": "prompt template id (the study trains with 1)"})


@dataclass
class FinetuneConfig(DataArguments):
    """Every setting of a fine-tuning run.  Defaults are the study's recipe (docs/study.md §4)."""

    data_dir: str | None = field(default=None, metadata={"help": "genft data folder (default: $GENFT_DATA_DIR, else ./data)"})
    # --- model (TRL ModelConfig names)
    model_name_or_path: str | None = field(default=None, metadata={"help": "genft model name, local folder or hub id"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (off by default)"})
    dtype: str | None = field(
        default=None, metadata={"help": "weights dtype: float32 (default), bfloat16, float16; bf16 mixed precision is --bf16; on a "
                                  "CPU bfloat16 is for LoRA only: the frozen base in bf16, the adapters float32"}
    )
    use_peft: bool = field(default=False, metadata={"help": "LoRA instead of full fine-tuning"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA target modules, e.g. all-linear or q_proj v_proj (default: peft's)"}
    )
    # --- training (TRL SFTConfig / transformers TrainingArguments names)
    output_dir: str | None = field(default=None, metadata={"help": "output folder (the fine-tuned model + manifest)"})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "epochs"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides num_train_epochs"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "batch size per device"})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "accumulation steps (effective batch 32)"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "learning-rate schedule"})
    warmup_steps: int = field(default=0, metadata={"help": "warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=1024, metadata={"help": "max tokens of prompt + completion + EOS"})
    seed: int = field(default=42, metadata={"help": "random seed (training order, LoRA init, random demos)"})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision, float32 weights (default: on with a GPU, off on CPU; on a CPU it needs "
                "native bf16: AVX512-BF16, AMX or ARM BF16)"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory"})
    padding_free: bool = field(
        default=True,
        metadata={"help": "each batch as one flattened row, no padding (TRL padding_free), where a batch of the "
                  "training examples is checked to give the same loss as padded; --padding_free false pads"})
    num_processes: int | None = field(
        default=None,
        metadata={"help": "processes (GPUs) training together under `accelerate launch` (default: as launched, "
                  "$WORLD_SIZE, else 1); part of the model's identity: effective batch = per-device batch x "
                  "accumulation x processes"})
    accelerate_config: str | None = field(
        default=None,
        metadata={"help": "an accelerate config file for sharded training (finetune/accelerate/fsdp.yaml, "
                  "deepspeed-zero3.yaml); the suite launches sft.py with it; its content is part of the identity"})
    # --- operational (not part of the config hash: they do not change the result)
    logging_steps: int = field(default=1, metadata={"help": "print progress / record loss every N steps"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps (resume after an interruption)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept while training"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep checkpoint-* folders after finishing"})
    torch_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's / $OMP_NUM_THREADS)"})
    step_models: list[int] | None = field(
        default=None,
        metadata={"help": "also keep the model after these optimizer steps, each in OUT/steps/step-<N>/ (for "
                  "learning-forgetting curves; a suite sets it from a run's evaluate_checkpoints)"})
    report_to: list[str] | None = field(
        default=None,
        metadata={"help": "where the trainer logs its curves (TRL / transformers report_to): none (default), "
                  "tensorboard, wandb, mlflow, trackio, ... or several; the tracker's library must be installed"})
    run_name: str | None = field(default=None, metadata={"help": "the run's name in the tracker (default: the "
                                                         "trainer's; a suite names it <suite>/<checkpoint>)"})


# Settings that do not change the trained model: excluded from the config hash, so that changing them does
# not make a finished run look different.  (padding_free: the same loss over the same targets, checked before
# training; the weights differ by float rounding at most, and a cell is keyed on the weights' own hash.)
OPERATIONAL = ("output_dir", "data_dir", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints",
               "torch_threads", "accelerate_config", "padding_free", "report_to", "run_name",
               "step_models")  # (the accelerate config's CONTENT is hashed, not its path)
FIELDS = tuple(f.name for f in dataclasses.fields(FinetuneConfig))
# genft's own data settings (what is trained on); every other field is the trainer's / model's (TRL's names).
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataArguments))
FIELD_HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(FinetuneConfig)}


def _settings_types():
    """A pydantic model of FinetuneConfig's fields, to type-check settings wherever they come from: a recipe
    file, a suite, the command line or Python (a setting not given is not checked: its default holds)."""
    hints = typing.get_type_hints(FinetuneConfig)
    fields: dict[str, Any] = {f.name: (hints[f.name], None) for f in dataclasses.fields(FinetuneConfig)}
    fields["lora_target_modules"] = (str | list[str] | None, None)  # "all-linear", "q_proj v_proj" or a list
    return create_model("FinetuneSettings", __config__=ConfigDict(extra="forbid"), **fields)


_TYPES = _settings_types()
_BOOL_FIELDS = {name for name, f in _TYPES.model_fields.items()
                if f.annotation is bool or bool in typing.get_args(f.annotation)}


def _type_name(key: str) -> str:
    tp = _TYPES.model_fields[key].annotation
    return getattr(tp, "__name__", None) or str(tp)


def check_types(values: Mapping[str, Any], source: str = "config") -> dict:
    """The settings, type-checked against FinetuneConfig (an int setting takes 2 or 2.0, never 2.7 or true; a
    number may be written 2e-4); ConfigError naming the source, the setting and the value otherwise.  Returns
    the values converted to their fields' types (but an int for a float: as written)."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{source}: unknown setting {unknown[0]!r}"
                          f"{' (and ' + ', '.join(map(repr, unknown[1:])) + ')' if unknown[1:] else ''}; "
                          f"known settings: {', '.join(FIELDS)}")
    for k, v in values.items():
        if isinstance(v, bool) and k not in _BOOL_FIELDS:
            raise ConfigError(f"{source}: {k}: expected {_type_name(k)}, got {v!r}")
    if isinstance(values.get("report_to"), str):  # "none", "tensorboard" or "a,b": TRL's spellings of a list
        values = {**values, "report_to": [n for n in re.split(r"[,\s]+", values["report_to"]) if n]}
    try:
        checked = _TYPES.model_validate(dict(values))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"][:1]) or "(settings)"
        raise ConfigError(f"{source}: {key}: {err['msg'].lower()} (got {values.get(key, err.get('input'))!r}); "
                          f"{FIELD_HELP.get(key, '')}".rstrip("; ")) from None
    # an int where a float is expected stays as written (2 is a valid float): the recipe hash of a config that
    # was valid before type checking stays what it was
    return {k: v if type(v) is int and isinstance(getattr(checked, k), float) else getattr(checked, k)
            for k, v in values.items()}


def config_from_mapping(values: Mapping[str, Any], source: str = "config") -> FinetuneConfig:
    return FinetuneConfig(**check_types(values, source))


def load_yaml_config(path: str | os.PathLike) -> dict:
    """Read a --config YAML (bounded: genft.settings_yaml) and check its keys and their types; errors name the
    file and the setting."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values, _ = settings_yaml.load(path)
    except settings_yaml.YamlError as e:
        raise ConfigError(f"--config {e}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(values).__name__}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"--config {path}: setting names are words, got {bad[0]!r}")
    return check_types(values, f"--config {path}")


def _norm_report_to(value) -> list[str]:
    """report_to as a list of integration names ([] for none); ConfigError for a name transformers does not
    know or whose library is not installed."""
    if value is None:
        return []
    names = [v for v in re.split(r"[,\s]+", value) if v] if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise ConfigError(f"report_to: expected integration names, got {value!r}")
    if names in ([], ["none"]):
        return []
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                              get_available_reporting_integrations)

    if names == ["all"]:
        return get_available_reporting_integrations()
    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ConfigError(f"report_to: unknown integration {unknown[0]!r}; expected none, all or some of "
                          f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        raise ConfigError(f"report_to: {missing[0]} is not installed here; `pip install {missing[0]}` "
                          "(or drop it from report_to)")
    return names


def _norm_steps(cfg: FinetuneConfig) -> list[int] | None:
    steps = cfg.step_models
    if steps is None or steps == []:
        return None
    if isinstance(steps, int) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in steps):
        raise ConfigError(f"step_models: expected a list of positive optimizer steps, got {steps!r}")
    if cfg.max_steps > 0 and max(steps) > cfg.max_steps:
        raise ConfigError(f"step_models: step {max(steps)} is beyond max_steps {cfg.max_steps}")
    if cfg.accelerate_config is not None:
        raise ConfigError("step_models: not with sharded training (accelerate_config): no process holds the model")
    return sorted(set(steps))


def _norm_modules(mods):
    if mods is None:
        return None
    if isinstance(mods, str):
        mods = [m for m in re.split(r"[,\s]+", mods) if m]
    mods = list(mods)
    if mods == ["all-linear"]:
        return "all-linear"
    return mods


def validate(cfg: FinetuneConfig) -> FinetuneConfig:
    """Check and complete a config (fills the default data set); raises ConfigError / DataError. Creates nothing."""
    for k, v in check_types(dataclasses.asdict(cfg), "config").items():
        setattr(cfg, k, v)
    if not cfg.task:
        raise ConfigError("task: required (--task), one of " + ", ".join(TASKS))
    if cfg.task not in TASKS:
        raise ConfigError(f"task: unknown task {cfg.task!r}; expected one of {', '.join(TASKS)}")
    if not cfg.model_name_or_path:
        raise ConfigError("model_name_or_path: required (--model_name_or_path), e.g. smollm2-135m or a model folder")
    if not cfg.output_dir:
        raise ConfigError("output_dir: required (--output_dir)")
    if cfg.dataset is None:
        cfg.dataset = gdata.train_dataset(cfg.task).name
    try:
        gdata.get_dataset(cfg.task, cfg.dataset)
    except gdata.DataError as e:
        raise ConfigError(f"dataset: {e}") from None
    if cfg.prompt not in PROMPT_IDS:
        raise ConfigError(f"prompt: {cfg.prompt!r} is not a prompt id; expected one of {PROMPT_IDS}")
    if cfg.icl_demos not in ICL_DEMOS:
        raise ConfigError(f"icl_demos: {cfg.icl_demos!r}; expected one of {', '.join(ICL_DEMOS)}")
    checks = [
        ("train_size", cfg.train_size > 0), ("icl_shots", cfg.icl_shots >= 0),
        ("train_limit", cfg.train_limit is None or cfg.train_limit > 0),
        ("learning_rate", cfg.learning_rate > 0), ("num_train_epochs", cfg.num_train_epochs > 0 or cfg.max_steps > 0),
        ("per_device_train_batch_size", cfg.per_device_train_batch_size > 0),
        ("gradient_accumulation_steps", cfg.gradient_accumulation_steps > 0),
        ("max_length", cfg.max_length > 0), ("warmup_steps", cfg.warmup_steps >= 0),
        ("logging_steps", cfg.logging_steps > 0), ("save_steps", cfg.save_steps > 0),
        ("lora_r", cfg.lora_r > 0), ("lora_dropout", 0 <= cfg.lora_dropout < 1),
        ("torch_threads", cfg.torch_threads is None or cfg.torch_threads > 0),
    ]
    for name, ok in checks:
        if not ok:
            raise ConfigError(f"{name}: invalid value {getattr(cfg, name)!r}")
    if cfg.num_processes is None:
        cfg.num_processes = launched_processes()
    elif cfg.num_processes < 1:
        raise ConfigError(f"num_processes: invalid value {cfg.num_processes!r}")
    if cfg.accelerate_config is not None and cfg.use_peft:
        raise ConfigError("accelerate_config: sharded training (FSDP, ZeRO-3) is for full fine-tuning; LoRA runs "
                          "train data parallel: set num_processes instead")
    if cfg.accelerate_config is not None and not Path(cfg.accelerate_config).is_file():
        raise ConfigError(f"accelerate_config: {cfg.accelerate_config}: no such file (genft ships "
                          "finetune/accelerate/ddp.yaml, fsdp.yaml and deepspeed-zero3.yaml)")
    if cfg.dtype not in (None, "float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype: {cfg.dtype!r}; expected float32, bfloat16 or float16")
    cfg.lora_target_modules = _norm_modules(cfg.lora_target_modules)
    cfg.report_to = _norm_report_to(cfg.report_to)
    cfg.step_models = _norm_steps(cfg)
    return cfg


def config_dict(cfg: FinetuneConfig) -> dict:
    return dataclasses.asdict(cfg)


def launched_processes() -> int:
    """How many processes train together in this launch ($WORLD_SIZE, set by accelerate / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


# LoRA's dropout masks (genft.training.dropout.MaskDropout): part of the recipe hash where LoRA has dropout
LORA_DROPOUT_MASKS = "genft 16-bit threshold masks"


def config_hash(cfg: FinetuneConfig, data_files: Mapping[str, str], seed: bool = True) -> str:
    """The recipe hash: sha256 over every setting that determines the trained model (learning rate, epochs,
    LoRA settings, max length, precision, prompt, demonstrations, number of processes, ...; not output paths
    or logging) and the training data's sha256s.  seed=False: the same without the seed, equal exactly for
    replicates of one recipe."""
    keyed = {k: v for k, v in config_dict(cfg).items() if k not in OPERATIONAL and (seed or k != "seed")}
    if cfg.use_peft and cfg.lora_dropout > 0:  # which random masks the dropout draws (training.dropout)
        keyed["lora_dropout_masks"] = LORA_DROPOUT_MASKS
    if cfg.accelerate_config:
        keyed["accelerate_config_sha256"] = sha256_file(Path(cfg.accelerate_config))
    return sha256_json({"config": keyed, "data": dict(sorted(data_files.items()))})


