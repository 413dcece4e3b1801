"""The suite file's schema: its sections as pydantic models.  The allowed keys, their types and their help
are the models' fields (a fine-tuning run's keys come from genft.training's own dataclasses), so the error
for an unknown key, the documentation (`genft suite keys`) and the parser cannot drift apart.

A suite file (see suites/*.yaml for commented examples)::

    name: smoke
    threads: 1
    data: {source: builtin}
    models: {smollm2: {model: smollm2-135m}}
    finetune:
      - name: lora-products          # genft's own keys of a run: name, base, recipe, seeds, test_sets
        task: sentiment              # ... and what it is trained on (training.DataArguments)
        dataset: builtin_products
        train_size: 100
        trainer:                     # the trainer's and model's settings, TRL's names (finetune/sft.py)
          use_peft: true
          learning_rate: 2.0e-4
    eval: {test_sets: [builtin_products], shots: {classification: [0, 2]}, limit: 24}

Errors name the file, the line and the key's path (`SuiteError`).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .. import settings_yaml
from ..harness_names import BACKENDS
from ..training import DATA_FIELDS, FIELD_HELP, DataArguments, FinetuneConfig
from .report_settings import ReportSettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# sft.py settings the suite decides itself: a run may not set them (a recipe's values are replaced).
SUITE_MANAGED = {
    "model_name_or_path": "set by the run's `base` (a models id)",
    "output_dir": "the suite writes <output>/checkpoints/<run>",
    "data_dir": "set by the suite's data.data_dir",
    "seed": "give the run `seeds: [s, ...]` (one checkpoint per seed)",
    "torch_threads": "set by the suite's `threads`",
    "step_models": "set by the run's `evaluate_checkpoints: [step, ...]`",
}


class SuiteError(ValueError):
    """A bad suite file or a suite that cannot run: the message names file, line, key and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    source: Literal["builtin", "study"] = Field("study", description="builtin: genft's generated data; study: "
                                                "the study's release (`genft data import-study`)")
    data_dir: str | None = Field(None, description="data folder (default: $GENFT_DATA_DIR, else ./data)")
    study_src: str | None = Field(None, description="study only: import the release from here (a folder, a .zip / "
                                  ".tar.gz archive or its URL) when sets are missing")
    protocol: Literal["clean", "study"] = Field("clean", description="clean: defective items dropped (counted); "
                                                "study: the study's exact protocol (its first 250 test items, "
                                                "defective items kept and scored wrong); part of every cell's key")


class ModelSection(_Section):
    model: str = Field(description="a genft model name, a local folder, or a hub id (owner/name)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="evaluation dtype (default and auto: the checkpoint's own, from its config.json); "
        "bfloat16 on a CPU needs native bf16 (AVX512-BF16, AMX, ARM BF16) and is refused without it")
    evaluate: bool = Field(True, description="evaluate the base model itself (the baseline)")


def _optional(tp: Any) -> Any:
    return tp if type(None) in typing.get_args(tp) else tp | None


def _settings_model(name: str, source: type, keep: typing.Callable[[str], bool], doc: str) -> type[BaseModel]:
    """A pydantic model of some of a training dataclass's fields: same names, types and help; every field
    optional (None: not set here, so the recipe's value or the default holds)."""
    hints = typing.get_type_hints(source)
    fields = {f.name: (_optional(hints[f.name]), Field(None, description=FIELD_HELP.get(f.name, "")))
              for f in dataclasses.fields(source) if keep(f.name)}
    for name in ("lora_target_modules", "report_to"):  # a YAML string ("all-linear", "tensorboard") or a list
        if name in fields:
            fields[name] = (str | list[str] | None, fields[name][1])
    return create_model(name, __base__=_Section, __doc__=doc, **fields)


TrainerSettings = _settings_model(
    "TrainerSettings", FinetuneConfig, lambda n: n not in DATA_FIELDS and n not in SUITE_MANAGED,
    "finetune/sft.py's trainer and model settings (TRL's names); they override the recipe's")
_RunData = _settings_model("_RunData", DataArguments, lambda n: True, "what a run is trained on")


class RunSection(_RunData):
    name: str = Field(pattern=NAME_PATTERN, description="the run's name (its checkpoint's, with one seed)")
    base: str | None = Field(None, description="a models id (default: the only model)")
    recipe: str | None = Field(None, description="an sft.py config file; the run's own keys win")
    seeds: list[int] | None = Field(None, min_length=1, description="one checkpoint per seed, named <name>-seed<s> "
                                    "(default: one, the recipe's seed or 42, named <name>)")
    test_sets: list[str] | str | None = Field(None, description="evaluate this run's checkpoints on these of "
                                              "eval.test_sets only (data set or task names; default: all)")
    evaluate_checkpoints: list[int] | None = Field(None, min_length=1, description="also evaluate the model after "
                                                   "these optimizer steps, each as a checkpoint of its own "
                                                   "(<checkpoint>@step<N>): the report's learning-forgetting curves")
    trainer: TrainerSettings = Field(default_factory=TrainerSettings,  # type: ignore[valid-type]
                                     description="finetune/sft.py settings under TRL's names (use_peft, "
                                     "learning_rate, lora_r, ...); they override the recipe's")


class StagesSection(_Section):
    """Staged evaluation: each cell's test items in a seeded fixed order, evaluated a stage at a time."""

    step: int = Field(ge=1, description="items per stage: stage s holds the first s*step items of the order")
    seed: int = Field(0, ge=0, description="the seed of the items' order (a permutation of the test set, the same "
                      "for every cell of a test set); seed and step are in every staged cell's key")
    stop: Literal["decided", "exhausted"] = Field("decided", description="decided: after each stage, a cell stops "
                                                  "once the run's stop decision names it (a run given none runs "
                                                  "to the end); exhausted: every cell runs to the end of its test "
                                                  "set (or eval.limit)")


class EvalSection(_Section):
    test_sets: Any = Field("all", description="all | list of data set names or task names")
    shots: Any = Field("study", description="study | list | {generation|classification|nli|<task>: [k, ...]}")
    prompts: Any = Field([1], description="list of prompt ids for every cell, or {same_task, cross_task, base}, "
                         "each a list or a mapping over task kinds / names (by the TEST set's task)")
    limit: Any = Field(None, description="first N test items: int | null | {kind, task or test set: N} (a "
                       "classification limit also covers nli unless nli is given; a test set's overrides its "
                       "task's)")
    demos: Literal["fixed", "random", "both"] = Field("fixed", description="fixed: the study's first k; "
                                                      "random: seeded per item; both")
    demo_seeds: list[int] = Field([0], min_length=1, description="seeds for random demonstrations")
    backend: Literal[BACKENDS] = Field("genft-hf", description="lm-eval model type; part of every cell's key")  # type: ignore[valid-type]
    batch_size: int = Field(8, ge=1, description="evaluation batch size (not in the key: scores do not depend on it)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="auto (cuda if available) | cpu | cuda | cuda:N; the device kind is in the key")
    group: Literal["shots", "cell"] = Field("shots", description="shots: one lm-eval call per (checkpoint, shots); "
                                            "cell: one call per cell (finer resume, exact per-cell times)")
    stages: StagesSection | None = Field(None, description="opt-in: evaluate every cell in stages of a seeded, fixed "
                                         "item order, stopping a cell when the verdict is in, e.g. "
                                         "{step: 100, seed: 0, stop: decided}; default: every item at once")


class Resources(_Section):
    """What one unit (one fine-tune, or one checkpoint's evaluation) asks the engine for."""

    gpus: int = Field(0, ge=0, description="GPUs (a fine-tune on several processes needs num_processes of them)")
    cpus: int = Field(1, ge=1, description="CPU cores")
    memory_gb: float | None = Field(None, gt=0, description="memory (default: the engine's)")
    time_min: int = Field(240, ge=1, description="Slurm: the job's time limit in minutes")


class ExecutorSection(_Section):
    kind: Literal["local", "ray", "slurm"] = Field("local", description="local: in this process; ray: Ray tasks "
                                                  "(pip install 'genft[ray]'); slurm: Slurm jobs through submitit "
                                                  "(pip install 'genft[slurm]'); `genft suite run --executor` wins")
    retries: int = Field(2, ge=0, description="times a failed or killed unit is run again")
    finetune: Resources = Field(default_factory=Resources, description="resources of a fine-tuning unit")
    evaluate: Resources = Field(default_factory=Resources, description="resources of an evaluation unit")
    address: str | None = Field(None, description="ray: a running cluster (auto, or host:port); default: start a "
                                "local one on this machine")
    cluster: Literal["slurm", "local", "debug"] = Field("slurm", description="slurm: submit to Slurm; local: "
                                                        "submitit's local executor (jobs as processes here)")
    partition: str | None = Field(None, description="slurm: partition")
    account: str | None = Field(None, description="slurm: account")
    log_dir: str | None = Field(None, description="slurm: submitit's folder of job scripts and logs (default "
                                "<output>/slurm)")
    poll_s: float = Field(10.0, gt=0, description="slurm: seconds between looks at the jobs")


class OutputSection(_Section):
    dir: str | None = Field(None, description="the output folder")


class SuiteFile(_Section):
    name: str = Field(pattern=NAME_PATTERN, description="the suite's name: letters, digits, '.', '_', '-'")
    description: str = Field("", description="free text")
    threads: int | None = Field(None, ge=1, description="torch threads for fine-tuning and evaluation")
    data: DataSection = Field(default_factory=DataSection)
    models: dict[str, ModelSection | str] = Field(min_length=1, description="base models: id -> spec")
    finetune: list[RunSection] = Field(default_factory=list, description="fine-tuning runs")
    eval: EvalSection = Field(default_factory=EvalSection)
    output: str | OutputSection | None = Field(None, description="default runs/<name>")
    executor: ExecutorSection = Field(default_factory=ExecutorSection, description="where units of work run")
    report: ReportSettings = Field(default_factory=ReportSettings, description="how the report judges findings "
                                   "(equivalence margins, degenerate arms, tolerances); every key optional")


# ---------------------------------------------------------------- locations and errors


class Where:
    """Error messages with the file, the line (from the YAML node tree) and the key's path."""

    def __init__(self, path: Path, node: yaml.Node | None):
        """`node`: the file's node graph from settings_yaml (bounded: aliases expand to a bounded size)."""
        self.path = path
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node, path):
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == "<<":
                    continue
                key = path + (getattr(k, "value", None),)
                self.lines[key] = k.start_mark.line + 1
                self._walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    @staticmethod
    def fmt(path: tuple) -> str:
        out = ""
        for p in path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out or "(top level)"

    def error(self, path: tuple, msg: str) -> SuiteError:
        line = next((self.lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self.lines), None)
        loc = f"{self.path}:{line}" if line else str(self.path)
        return SuiteError(f"{loc}: {self.fmt(path)}: {msg}")


def _nested(annotation: Any) -> type[BaseModel] | None:
    """The section model inside a field's type (X, X | None, list[X], dict[str, X | str])."""
    todo = [annotation]
    while todo:
        a = todo.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        todo += list(typing.get_args(a))
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model at a key path (for 'allowed keys under ...')."""
    model: Any = SuiteFile
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if part not in model.model_fields:
            return None if model is not SuiteFile or part != "models" else ModelSection
        model = _nested(model.model_fields[part].annotation)
    return model


def _unknown_key(loc: tuple) -> str:
    key, parent = loc[-1], loc[:-1]
    model = _model_at(parent)
    allowed = ", ".join(model.model_fields) if model else "see the suite schema"
    hint = ""
    if key in SUITE_MANAGED:
        hint = f" ({key} is {SUITE_MANAGED[key]})"
    elif model is not None and issubclass(model, RunSection) and key in TrainerSettings.model_fields:
        hint = f"; {key} is a trainer setting: put it under {Where.fmt(parent + ('trainer',))}"
    elif key == "method" and model is not None and issubclass(model, RunSection):
        hint = "; LoRA or full fine-tuning is the trainer's use_peft: true | false (under trainer:)"
    return f"unknown key {key!r}{hint}; allowed keys under {Where.fmt(parent)}: {allowed}"


def parse(path: Path) -> tuple[SuiteFile, Where, dict]:
    """Read and check a suite file's structure and types; (the parsed file, its locator, the raw mapping)."""
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    try:
        raw, node = settings_yaml.load(path)
    except settings_yaml.YamlError as e:
        raise SuiteError(str(e)) from None
    where = Where(path, node)
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: expected a mapping with keys {', '.join(SuiteFile.model_fields)}")
    try:
        return SuiteFile.model_validate(raw), where, raw
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int"))))
        if err["type"] == "extra_forbidden":
            raise where.error(loc, _unknown_key(loc)) from None
        if err["type"] == "missing":
            raise where.error(loc, f"required: {_field_help(loc)}") from None
        got = err.get("input")
        raise where.error(loc, f"{err['msg']} (got {got!r}); {_field_help(loc)}") from None


def _field_help(loc: tuple) -> str:
    model = _model_at(loc[:-1]) if loc else None
    field = model.model_fields.get(loc[-1]) if model and loc and isinstance(loc[-1], str) else None
    return (field.description or "") if field else ""


def describe_keys() -> list[str]:
    """Every key of a suite file with its help, from the schema itself (`genft suite keys`)."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            lines.append(f"{prefix}{name}: {f.description or ''}".rstrip(": "))
            sub = _nested(f.annotation)
            if sub is not None:
                walk(sub, prefix + "  ")

    walk(SuiteFile, "")
    return lines
