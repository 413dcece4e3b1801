"""The fine-tuning manifest: `OUT/genft_manifest.json`, what a finished run says about itself.

Training writes it last (`write_manifest`, atomically: its presence means the run finished); everyone else
(the trainer's resume check, the suite planner and executor, the report) reads it through `read_manifest`,
which returns a validated `Manifest` or None when there is none, and raises `ManifestError` naming the file and
what to do for a manifest of another version, of another tool, or edited into something that does not validate.

The JSON field names are those genft has written since manifest version 2 (`genft_manifest_version: 2`), so
finished checkpoints stay readable; fields added later within version 2 (`steps`, `training.batching`,
`training.lm_head`, `training.mixed_precision`, `device.precision`, `training.lora_dropout`,
`training.attention`) are optional when reading.

No torch or transformers here: the report reads manifests without them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..files import read_json, write_json

MANIFEST = "genft_manifest.json"
MANIFEST_VERSION = 2  # 2: weights_sha256, replicate_hash
READS_VERSIONS = (2,)


class ManifestError(RuntimeError):
    """A manifest that cannot be used: the message names the file, what is wrong and what to do."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Part):
    name_or_path: str = Field(description="the model setting as given (a genft name, a folder or a hub id)")
    resolved: str = Field(description="the folder the base weights were loaded from")
    parameters: int = Field(description="parameters of the base model")
    trainable_parameters: int = Field(description="parameters trained (all for full fine-tuning; LoRA's)")
    method: Literal["full", "lora"]


class DataInfo(_Part):
    task: str
    dataset: str
    files: dict[str, str] = Field(description="training file name -> its sha256 (part of the recipe hash)")
    paths: dict[str, str] = Field(description="training file name -> the path it was read from")
    examples: int = Field(description="training examples")
    icl_shots: int = Field(description="demonstrations per training prompt (0: plain fine-tuning)")
    icl_demos: str | None = Field(description="fixed or random demonstrations; None without demonstrations")


class Truncation(_Part):
    """What was shortened to fit max_length (before TRL saw the data)."""

    examples: int
    examples_demos_cut: int = Field(description="examples that lost demonstrations")
    demos_dropped: int = Field(description="demonstrations dropped over all examples")
    examples_input_cut: int = Field(description="examples whose input text was cut")
    input_chars_cut: int = Field(description="characters of input text cut over all examples")
    max_length: int
    tokens: int = Field(description="tokens of all examples (prompt + completion + EOS)")
    longest: int = Field(description="tokens of the longest example")


class DeviceInfo(_Part):
    device: Literal["cpu", "cuda"]
    use_cpu: bool
    bf16: bool = Field(description="bf16 mixed precision")
    dtype: str = Field(description="the weights' dtype")
    precision: str | None = Field(None, description="the training numerics in words (absent in early manifests)")
    gpu: str | None
    torch_threads: int
    world_size: int = Field(description="processes that trained together")


class Batching(_Part):
    padding_free: bool = Field(description="batches flattened into one row (TRL padding_free)")
    reason: str
    rows: int | None = Field(None, description="rows of the batch the padded and flattened losses were compared on")
    padded_loss: float | None = None
    flat_loss: float | None = None


class TrainingInfo(_Part):
    global_steps: int
    epochs: float | None
    train_loss: float | None = Field(description="mean loss over the steps this process trained (None: none)")
    final_loss: float | None
    loss_curve: list[tuple[int, float]] = Field(description="[step, loss] per logged step")
    wall_time_s: float
    trained_tokens: int
    tokens_per_s: float | None
    resumed_from_checkpoint: str | None
    batching: Batching | None = None
    lm_head: str | None = Field(None, description="where the loss computed the LM head")
    mixed_precision: str | None = Field(None, description="accelerate's mixed precision (bf16, no)")
    lora_dropout: str | None = Field(None, description="LoRA's dropout: adapters, p and the masks drawn (None: none)")
    attention: str | None = Field(None, description="the attention the model trained with (genft_examples: per "
                                  "example in padding-free batches, training.attention)")
    effective_batch_size: int


class WeightDeviation(_Part):
    mean_abs_diff: float = Field(description="mean |w - w_base| over all parameters")
    parameters: int
    tensors_changed: int


class StepModel(_Part):
    step: int
    path: str
    weights_sha256: str


class Outputs(_Part):
    model_dir: str
    adapter_dir: str | None
    lm_eval_model_args: list[str]


class Manifest(_Part):
    """A finished fine-tuning run (written last into its output folder)."""

    manifest_version: Literal[2] = Field(MANIFEST_VERSION, alias="genft_manifest_version")
    status: Literal["finished"] = "finished"
    config: dict[str, Any] = Field(description="every setting of the run (FinetuneConfig, as validated)")
    config_hash: str = Field(description="the recipe hash: every setting that changes the weights, and the data")
    replicate_hash: str = Field(description="config_hash without the seed: equal exactly for replicates")
    weights_sha256: str = Field(description="fingerprint of the trained weights (genft.models.weights_fingerprint)")
    model: ModelInfo
    data: DataInfo
    truncation: Truncation
    versions: dict[str, str | None] = Field(description="library versions that trained it")
    seed: int
    device: DeviceInfo
    training: TrainingInfo
    weight_deviation: WeightDeviation
    steps: dict[str, StepModel] = Field({}, description="intermediate models (step_models) by step")
    outputs: Outputs
    argv: list[str]
    finished_at: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def missing_steps(self, steps: list[int] | None) -> list[int]:
        """The requested steps this run did not keep a model of."""
        return [s for s in steps or [] if str(s) not in self.steps]

    def dump(self) -> dict:
        """The JSON content (genft's field names)."""
        return self.model_dump(mode="json", by_alias=True)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """OUT/genft_manifest.json, through the atomic write (never a partial file)."""
    path = Path(folder) / MANIFEST
    write_json(path, manifest.dump())
    return path


def _explain(e: ValidationError) -> str:
    parts = [f"{'.'.join(str(x) for x in err['loc']) or '(manifest)'}: {err['msg']}" for err in e.errors()[:3]]
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at `path` (a manifest file, or an output folder holding one); None when there is none.
    ManifestError naming the file and what to do for one this genft cannot use."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the fine-tuning manifest ({e.strerror or e})") from None
    except ValueError as e:
        raise ManifestError(f"{e}: not a fine-tuning manifest genft wrote (it writes them atomically); move "
                            f"{path.parent} away and re-run the fine-tune") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: not a fine-tuning manifest (a JSON {type(raw).__name__}, not an object); move "
                            f"{path.parent} away and re-run the fine-tune")
    version = raw.get("genft_manifest_version")
    if version not in READS_VERSIONS:
        what = "no genft_manifest_version (a manifest of an early genft or of another tool)" if version is None \
            else f"genft_manifest_version {version!r}"
        raise ManifestError(f"{path}: {what}; this genft reads manifest version "
                            f"{', '.join(map(str, READS_VERSIONS))}: re-run the fine-tune into a new folder (or "
                            f"delete {path.parent} to retrain it there)")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise ManifestError(f"{path}: not a valid fine-tuning manifest: {_explain(e)}; it was edited or written by "
                            f"something else: delete {path.parent} and re-run the fine-tune") from None


def training_facts(manifest: Manifest) -> dict:
    """What the report shows of a run's manifest (and keeps in its evidence file): training time, speed and
    steps, and the truncation counts of what was cut."""
    t, tr = manifest.training, manifest.truncation
    return {"training": {"wall_time_s": t.wall_time_s, "tokens_per_s": t.tokens_per_s, "global_steps": t.global_steps},
            "truncation": {k: getattr(tr, k) for k in ("examples_demos_cut", "demos_dropped", "examples_input_cut",
                                                        "input_chars_cut")}}
