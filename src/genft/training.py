"""Supervised fine-tuning with TRL: plain (FT) and with in-context demonstrations (FTICL), full or LoRA.

`finetune/sft.py` is a thin command line over this module: `FinetuneConfig` holds every setting (TRL's
argument names, plus genft's data settings), `run(config)` trains ONE `trl.SFTTrainer` and writes an output
folder that lm-eval loads directly (`pretrained=OUT`).

Training data (one source of truth: every string comes from genft.prompts)::

    {"prompt": render_context(task, item, demos, prompt), "completion": render_target(task, item)}

TRL appends EOS to the completion and puts the loss on the completion only; no chat template.  With
`icl_shots=k` (FTICL) the prompt carries k demonstrations in lm-eval's exact few-shot layout, so a fixed-demo
training prompt equals, character for character, the context lm-eval builds for that item at k shots.

Truncation (STUDY.md section 6: the original protocol lost ~360-870 XSum targets): before TRL sees the data,
each example whose tokens (prompt + completion + EOS) exceed `max_length` is shortened on the prompt side:
  1. demonstrations are dropped from the END of the demo list, one at a time (the first j demos are kept, so
     a cut fixed-demo example is still exactly lm-eval's j-shot context);
  2. then input text is cut from its START (the side away from the target), field by field in template order
     (document / context / premise / sentence1 first), at word boundaries; the template and the target stay.
An example that does not fit even with no demonstrations and empty inputs is an error.  The counts are
printed and stored in the manifest; after the trainer is built the row count entering it is checked against
the input count, so TRL's own end-truncation and silent row dropping cannot happen.

Output folder OUT::

    OUT/config.json, model.safetensors, tokenizer*   the fine-tuned model (for LoRA: the merged weights)
    OUT/adapter/                                      LoRA only: the adapter (pretrained=BASE,peft=OUT/adapter)
    OUT/genft_run.json                                the config, written when training starts
    OUT/checkpoint-*/                                 while training (resume); deleted when finished
    OUT/genft_manifest.json                           written LAST, atomically: its presence = finished
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import data as gdata
from .files import fmt_duration, now_utc, read_json_or_none, sha256_file, sha256_json, write_json
from .models import weights_fingerprint
from .prompts import PROMPT_IDS, TARGET_DELIMITER, get_task, render_context, render_target

MANIFEST = "genft_manifest.json"
RUN_FILE = "genft_run.json"
ADAPTER_DIR = "adapter"
MANIFEST_VERSION = 2  # 2: weights_sha256, replicate_hash
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
    """Every setting of a fine-tuning run.  Defaults are the study's recipe (STUDY.md section 4)."""

    data_dir: str | None = field(default=None, metadata={"help": "genft data folder (default: $GENFT_DATA_DIR, else ./data)"})
    # --- model (TRL ModelConfig names)
    model_name_or_path: str | None = field(default=None, metadata={"help": "genft model name, local folder or hub id"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (off by default)"})
    dtype: str | None = field(
        default=None, metadata={"help": "weights dtype: float32 (default), bfloat16, float16; bf16 mixed precision is --bf16"}
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
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on with a GPU, off on CPU)"})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory"})
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


# Settings that do not change the trained model: excluded from the config hash, so that changing them does
# not make a finished run look different.
OPERATIONAL = ("output_dir", "data_dir", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints",
               "torch_threads", "accelerate_config")  # (the accelerate config's CONTENT is hashed, not its path)
FIELDS = tuple(f.name for f in dataclasses.fields(FinetuneConfig))
# genft's own data settings (what is trained on); every other field is the trainer's / model's (TRL's names).
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataArguments))
FIELD_HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(FinetuneConfig)}


def config_from_mapping(values: Mapping[str, Any], source: str = "config") -> FinetuneConfig:
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{source}: unknown setting {unknown[0]!r}"
                          f"{' (and ' + ', '.join(map(repr, unknown[1:])) + ')' if unknown[1:] else ''}; "
                          f"known settings: {', '.join(FIELDS)}")
    return FinetuneConfig(**dict(values))


def load_yaml_config(path: str | os.PathLike) -> dict:
    """Read a --config YAML (yaml.safe_load) and check its keys; unknown keys are errors naming key and file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(values).__name__}")
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting {unknown[0]!r} (known: {', '.join(FIELDS)})")
    return values


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
    from .prompts import TASKS

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
    return cfg


def config_dict(cfg: FinetuneConfig) -> dict:
    return dataclasses.asdict(cfg)


def launched_processes() -> int:
    """How many processes train together in this launch ($WORLD_SIZE, set by accelerate / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def config_hash(cfg: FinetuneConfig, data_files: Mapping[str, str], seed: bool = True) -> str:
    """The recipe hash: sha256 over every setting that determines the trained model (learning rate, epochs,
    LoRA settings, max length, precision, prompt, demonstrations, number of processes, ...; not output paths
    or logging) and the training data's sha256s.  seed=False: the same without the seed, equal exactly for
    replicates of one recipe."""
    keyed = {k: v for k, v in config_dict(cfg).items() if k not in OPERATIONAL and (seed or k != "seed")}
    if cfg.accelerate_config:
        keyed["accelerate_config_sha256"] = sha256_file(Path(cfg.accelerate_config))
    return sha256_json({"config": keyed, "data": dict(sorted(data_files.items()))})


# ---------------------------------------------------------------- data


@dataclass
class TrainingData:
    examples: list[dict]  # {"prompt", "completion"}, after truncation
    items: list[dict]  # the training items, in order
    demos: list[list[int]] | list[dict]  # per example: the demo items used (before truncation)
    files: dict[str, str]  # file name -> sha256
    paths: dict[str, str]
    truncation: dict


def load_training_items(cfg: FinetuneConfig) -> tuple[list[dict], list[dict], dict[str, str], dict[str, str]]:
    """(training items, demo pool for fixed demos, {file: sha256}, {file: path}); clear errors if missing."""
    root = cfg.data_dir
    info = gdata.get_dataset(cfg.task, cfg.dataset)
    folder = gdata.dataset_dir(cfg.task, cfg.dataset, root)
    split = f"train_{cfg.train_size}"
    if not folder.is_dir():
        raise gdata.DataError(
            f"data set {cfg.task}/{cfg.dataset} is not in {gdata.data_dir(root)}: create it with "
            f"`{gdata.data_command(info)} --data-dir {gdata.data_dir(root)}` (or point --data_dir / GENFT_DATA_DIR at it)"
        )
    if not (folder / f"{split}.jsonl").is_file():
        sizes = gdata.train_sizes(cfg.task, cfg.dataset, root)
        raise gdata.DataError(
            f"train_size {cfg.train_size}: {folder / (split + '.jsonl')} does not exist; {cfg.task}/{cfg.dataset} has "
            f"training sizes {', '.join(map(str, sizes)) or 'none (not a training data set)'}"
            + ("" if sizes else f"; the training sets come from `{gdata.data_command(info)}`")
        )
    items = gdata.load_split(cfg.task, cfg.dataset, split, root)
    files = {f"{split}.jsonl": gdata.file_sha256(folder / f"{split}.jsonl")}
    paths = {f"{split}.jsonl": str(folder / f"{split}.jsonl")}
    if cfg.train_limit is not None:
        if cfg.train_limit > len(items):
            raise ConfigError(f"train_limit: {cfg.train_limit} is more than the {len(items)} items of {paths[split + '.jsonl']}")
        items = items[: cfg.train_limit]
    pool: list[dict] = []
    if cfg.icl_shots and cfg.icl_demos == "fixed":
        pool = gdata.load_split(cfg.task, cfg.dataset, "demos", root)
        files["demos.jsonl"] = gdata.file_sha256(folder / "demos.jsonl")
        paths["demos.jsonl"] = str(folder / "demos.jsonl")
        if cfg.icl_shots > len(pool):
            raise ConfigError(
                f"icl_shots: k={cfg.icl_shots} is larger than the demo pool of {cfg.task}/{cfg.dataset} "
                f"({len(pool)} items in {paths['demos.jsonl']})"
            )
    elif cfg.icl_shots and cfg.icl_shots > len(items) - 1:
        raise ConfigError(f"icl_shots: k={cfg.icl_shots} random demos need at least k+1 training items, have {len(items)}")
    return items, pool, files, paths


def _item_key(spec, item) -> tuple:
    return tuple(item[f] for f in spec.fields)


def random_demos(task: str, items: Sequence[Mapping[str, str]], k: int, seed: int) -> list[list[int]]:
    """Per example i: k distinct indices into `items`, drawn with a seeded RNG, never i nor a copy of item i."""
    spec = get_task(task)
    keys = [_item_key(spec, it) for it in items]
    rng = random.Random(f"genft-icl-{seed}")
    out = []
    for i in range(len(items)):
        chosen: list[int] = []
        seen = set()
        attempts = 0
        while len(chosen) < k:
            j = rng.randrange(len(items))
            attempts += 1
            if j != i and j not in seen and keys[j] != keys[i]:
                chosen.append(j)
                seen.add(j)
            if attempts > 100 * (k + 1) + 10 * len(items):
                raise ConfigError(f"icl_shots: cannot draw {k} demos different from training item {i} (too many duplicates)")
        out.append(chosen)
    return out


class _Measure:
    """Token count of prompt + completion + EOS, tokenized exactly as TRL's SFTTrainer does (one string)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token or ""

    def __call__(self, prompt: str, completion: str) -> int:
        return len(self.tok(text=prompt + completion + self.eos)["input_ids"])


def _word_starts(text: str) -> list[int]:
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    if len(starts) <= 1:  # no spaces to cut at (e.g. one long token run): cut at characters
        starts = list(range(len(text)))
    return starts + [len(text)]


def fit_example(
    task: str,
    item: Mapping[str, str],
    demos: Sequence[Mapping[str, str]],
    measure: Callable[[str, str], int],
    max_length: int,
    prompt: int = 1,
    target_delimiter: str = TARGET_DELIMITER,
) -> tuple[dict, dict]:
    """One training example that fits into max_length: drop trailing demos, then cut inputs from their start.

    Returns ({"prompt", "completion"}, {"demos_dropped": n, "input_chars_cut": n, "length": tokens}).
    """
    spec = get_task(task)
    completion = render_target(spec, item)
    kept = list(demos)
    text = render_context(spec, item, kept, prompt, target_delimiter)
    n = measure(text, completion)
    dropped = 0
    while n > max_length and kept:
        kept.pop()  # the last demo goes first: the first j demos stay, as in lm-eval's j-shot context
        dropped += 1
        text = render_context(spec, item, kept, prompt, target_delimiter)
        n = measure(text, completion)
    cut_chars = 0
    if n > max_length:
        work = dict(item)
        bare = dict(item, **{f: "" for f in spec.inputs})
        n_bare = measure(render_context(spec, bare, [], prompt, target_delimiter), completion)
        if n_bare > max_length:
            raise TruncationError(
                f"the bare template + target + EOS of this example takes {n_bare} tokens, more than max_length "
                f"{max_length}: raise --max_length (target: {completion[:80]!r}{'...' if len(completion) > 80 else ''})"
            )
        for fname in spec.inputs:  # template order: the field farthest from the target first
            value = item[fname]
            starts = _word_starts(value)
            def length_at(pos: int) -> int:
                return measure(render_context(spec, dict(work, **{fname: value[pos:]}), [], prompt, target_delimiter),
                               completion)
            if length_at(len(value)) > max_length:  # even empty this field is not enough: empty it, go on
                work[fname] = ""
                cut_chars += len(value)
                continue
            lo, hi = 0, len(starts) - 1  # smallest cut position (in starts) that fits
            while lo < hi:
                mid = (lo + hi) // 2
                if length_at(starts[mid]) <= max_length:
                    hi = mid
                else:
                    lo = mid + 1
            while length_at(starts[lo]) > max_length:  # tokenization is not strictly monotone: step on
                lo += 1
            work[fname] = value[starts[lo]:]
            cut_chars += starts[lo]
            break
        text = render_context(spec, work, [], prompt, target_delimiter)
        n = measure(text, completion)
        assert n <= max_length, (n, max_length)
    return {"prompt": text, "completion": completion}, {"demos_dropped": dropped, "input_chars_cut": cut_chars, "length": n}


def build_examples(
    cfg: FinetuneConfig, tokenizer, items: Sequence[dict], pool: Sequence[dict], log: Callable[[str], None] = print
) -> tuple[list[dict], list[list[dict]], dict]:
    """The prompt-completion examples (truncated to fit), the demos each example was given, and the counts."""
    k = cfg.icl_shots
    if k and cfg.icl_demos == "fixed":
        demo_lists = [list(pool[:k])] * len(items)
    elif k:
        demo_lists = [[items[j] for j in idx] for idx in random_demos(cfg.task, items, k, cfg.seed)]
    else:
        demo_lists = [[] for _ in items]
    measure = _Measure(tokenizer)
    examples, lengths = [], []
    counts = {"examples": len(items), "examples_demos_cut": 0, "demos_dropped": 0, "examples_input_cut": 0,
              "input_chars_cut": 0, "max_length": cfg.max_length}
    for i, (item, demos) in enumerate(zip(items, demo_lists)):
        try:
            ex, info = fit_example(cfg.task, item, demos, measure, cfg.max_length, cfg.prompt)
        except TruncationError as e:
            raise TruncationError(f"training item {i} of {cfg.task}/{cfg.dataset} train_{cfg.train_size}: {e}") from None
        examples.append(ex)
        lengths.append(info["length"])
        if info["demos_dropped"]:
            counts["examples_demos_cut"] += 1
            counts["demos_dropped"] += info["demos_dropped"]
        if info["input_chars_cut"]:
            counts["examples_input_cut"] += 1
            counts["input_chars_cut"] += info["input_chars_cut"]
    counts["tokens"] = sum(lengths)
    counts["longest"] = max(lengths) if lengths else 0
    cut = counts["examples_demos_cut"] + counts["examples_input_cut"]
    log(f"[genft] {len(examples)} examples, {counts['tokens']} tokens (longest {counts['longest']}, max_length "
        f"{cfg.max_length}); truncated: {counts['examples_demos_cut']} lost demos ({counts['demos_dropped']} demos), "
        f"{counts['examples_input_cut']} had input cut ({counts['input_chars_cut']} chars){'' if cut else ' (none)'}")
    return examples, demo_lists, counts


# ---------------------------------------------------------------- output folder state


def _diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "(same settings; the training data files changed)"


def output_state(out: Path, chash: str, cfg: FinetuneConfig) -> str:
    """'new', 'resume' or 'done'; raises ConfigError when OUT holds another run or unrelated files."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"output_dir: {out} exists and is not a folder")
    manifest = read_json_or_none(out / MANIFEST)
    run = manifest or read_json_or_none(out / RUN_FILE)
    if run is None:
        # (a temporary file is another process of the same launch writing genft_run.json right now)
        if any(not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir()):
            raise ConfigError(f"output_dir: {out} is not empty and holds no genft run; choose another --output_dir")
        return "new"
    if run.get("config_hash") != chash:
        mine = {k: v for k, v in config_dict(cfg).items() if k not in OPERATIONAL}
        theirs = {k: v for k, v in (run.get("config") or {}).items() if k not in OPERATIONAL}
        what = "a finished run" if manifest else "an unfinished run"
        raise ConfigError(
            f"output_dir: {out} holds {what} with a different config ({_diff(theirs, mine)}); use another "
            f"--output_dir, or delete {out} to start over"
        )
    return "done" if manifest else "resume"


# ---------------------------------------------------------------- progress


def make_progress_callback(log: Callable[[str], None] = print):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step: step/total, loss, tokens/s, elapsed, time left."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            self.step0 = state.global_step
            self.tok0 = state.num_input_tokens_seen or 0

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            dt = time.time() - self.t0
            done = state.global_step - self.step0
            tok = (state.num_input_tokens_seen or 0) - self.tok0
            left = (state.max_steps - state.global_step) * dt / done if done else float("nan")
            log(f"[genft] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} loss {logs['loss']:.4f} "
                f"lr {logs.get('learning_rate', 0):.2e} {tok / dt if dt else 0:.0f} tok/s elapsed {fmt_duration(dt)} "
                f"left {fmt_duration(left) if math.isfinite(left) else '?'}")

    return Progress()


# ---------------------------------------------------------------- the run


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "genft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def device_settings(cfg: FinetuneConfig) -> dict:
    """CPU: use_cpu, fp32, no bf16.  GPU: bf16 mixed precision by default (fp32 master weights)."""
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and cfg.bf16:
        raise ConfigError("bf16: bf16 training needs a GPU; on CPU genft trains in float32 (drop --bf16)")
    if not gpu and cfg.dtype in ("bfloat16", "float16"):
        raise ConfigError(f"dtype: {cfg.dtype} weights are not supported for CPU training; use float32")
    bf16 = bool(cfg.bf16) if cfg.bf16 is not None else (gpu and torch.cuda.is_bf16_supported())
    return {"device": "cuda" if gpu else "cpu", "use_cpu": not gpu, "bf16": bf16, "dtype": cfg.dtype or "float32",
            "gpu": torch.cuda.get_device_name(0) if gpu else None, "torch_threads": torch.get_num_threads(),
            "world_size": int(cfg.num_processes or 1)}


def weight_deviation(base: Mapping[str, Any], model) -> dict:
    """Mean absolute parameter difference from the base over all parameters (STUDY.md section 5)."""
    import torch

    total, count, n_changed = 0.0, 0, 0
    for name, p in model.named_parameters():
        b = base.get(name)
        if b is None:
            raise RuntimeError(f"weight deviation: parameter {name} not in the base model")
        d = (p.detach().float().cpu() - b.float()).abs()
        total += float(d.sum(dtype=torch.float64))
        count += d.numel()
        n_changed += int(d.gt(0).any())
    return {"mean_abs_diff": total / count if count else float("nan"), "parameters": count,
            "tensors_changed": n_changed}


def weight_deviation_from_files(base_path: str, out: Path, dtype, trust_remote_code: bool = False) -> dict:
    """weight_deviation between the base model's and the saved checkpoint's weights, both loaded on the CPU:
    for sharded training (FSDP, ZeRO-3), where no process holds the whole model in memory."""
    from transformers import AutoModelForCausalLM

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                    device_map="cpu")

    base = {n: p.detach() for n, p in load(base_path).named_parameters()}
    return weight_deviation(base, load(str(out)))


def run(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume, or skip a finished run).  Returns the manifest.  Raises ConfigError / DataError /
    TruncationError for bad settings before anything is written."""
    cfg = validate(cfg)
    if cfg.num_processes != launched_processes():
        raise ConfigError(
            f"num_processes: the config says {cfg.num_processes} but this launch runs {launched_processes()} "
            f"process(es); launch `accelerate launch --multi_gpu --num_processes {cfg.num_processes} finetune/sft.py "
            "...` (on CPU too: data parallel with gloo; accelerate's --cpu runs ONE process), or change the setting")
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.output_dir).expanduser().resolve()
    items, pool, files, paths = load_training_items(cfg)
    chash = config_hash(cfg, files)
    state = output_state(out, chash, cfg)
    if state == "done":
        log(f"[genft] {out} already holds this finished run (config {chash[:12]}); nothing to do")
        return json.loads((out / MANIFEST).read_text())

    from . import models

    try:
        model_path = models.resolve(cfg.model_name_or_path)
    except models.ModelError as e:
        raise ConfigError(f"model_name_or_path: {e}") from None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.eos_token is None:
        raise ConfigError(f"model_name_or_path: the tokenizer of {model_path} has no EOS token")
    examples, demo_lists, trunc = build_examples(cfg, tokenizer, items, pool, log)
    dev = device_settings(cfg)

    # ---- everything checked: from here on the output folder is written
    out.mkdir(parents=True, exist_ok=True)
    if state == "new" and int(os.environ.get("RANK", "0") or 0) == 0:  # one writer per launch
        write_json(out / RUN_FILE, {"config": config_dict(cfg), "config_hash": chash, "data": files,
                                            "started_at": now_utc()})
    return _train(cfg, out, chash, model_path, tokenizer, examples, trunc, files, paths, dev, log)


def _train(cfg, out, chash, model_path, tokenizer, examples, trunc, files, paths, dev, log) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    dtype = getattr(torch, dev["dtype"])
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    sharded = bool(cfg.accelerate_config)  # no process holds the whole model: deviation from the saved files
    base = {} if sharded else {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
    n_params = sum(p.numel() for p in model.parameters())

    peft_config = None
    if cfg.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM", bias="none")
    args = SFTConfig(
        output_dir=str(out),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=dev["bf16"],
        use_cpu=dev["use_cpu"],
        activation_checkpointing=cfg.activation_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen="non_padding",
        trust_remote_code=cfg.trust_remote_code,
        dataset_num_proc=None,
    )
    train_ds = Dataset.from_list(examples)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[make_progress_callback(log)])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces the raw log dicts
    # TRL truncates the end of long rows and drops rows left with no target: the pre-truncation above must
    # have made both impossible.  Check, rather than trust.
    prepared = trainer.train_dataset
    if len(prepared) != len(examples):
        raise RuntimeError(f"TRL dropped rows: {len(examples)} examples in, {len(prepared)} rows entering the trainer")
    longest = max(len(r) for r in prepared["input_ids"])
    if longest > cfg.max_length:
        raise RuntimeError(f"a prepared row has {longest} tokens > max_length {cfg.max_length}")
    n_target = sum(sum(1 for t in lab if t != -100) for lab in prepared["labels"])
    log(f"[genft] {len(prepared)} rows enter the trainer (= {len(examples)} examples), {n_target} target tokens; "
        f"device {dev['device']} dtype {dev['dtype']} bf16 {dev['bf16']} threads {dev['torch_threads']}"
        f"{' LoRA r=%d alpha=%d' % (cfg.lora_r, cfg.lora_alpha) if cfg.use_peft else ' full fine-tuning'}")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log(f"[genft] resuming from {last}")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.time() - t0
    tokens = trainer.state.num_input_tokens_seen - (trainer._initial_num_input_tokens_seen
                                                    if hasattr(trainer, "_initial_num_input_tokens_seen") else 0)
    loss_curve = [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h]

    manifest = None
    if not cfg.use_peft:
        trainer.save_model(str(out))  # on every process: a sharded model is gathered; only the main one writes
    if trainer.is_world_process_zero():
        if cfg.use_peft:
            adapter_dir = out / ADAPTER_DIR
            trainer.model.save_pretrained(str(adapter_dir))
            tokenizer.save_pretrained(str(adapter_dir))
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out), safe_serialization=True)
            tokenizer.save_pretrained(str(out))
            final = merged
        else:
            final = trainer.model
        deviation = (weight_deviation_from_files(model_path, out, dtype, cfg.trust_remote_code) if sharded
                     else weight_deviation(base, final))
        if not cfg.keep_checkpoints:
            for ck in out.glob("checkpoint-*"):
                shutil.rmtree(ck, ignore_errors=True)
        manifest = {
            "genft_manifest_version": MANIFEST_VERSION,
            "status": "finished",
            "config": config_dict(cfg),
            "config_hash": chash,
            "replicate_hash": config_hash(cfg, files, seed=False),
            "weights_sha256": weights_fingerprint(out),
            "model": {"name_or_path": cfg.model_name_or_path, "resolved": model_path, "parameters": n_params,
                      "trainable_parameters": trainable, "method": "lora" if cfg.use_peft else "full"},
            "data": {"task": cfg.task, "dataset": cfg.dataset, "files": files, "paths": paths,
                     "examples": len(examples), "icl_shots": cfg.icl_shots,
                     "icl_demos": cfg.icl_demos if cfg.icl_shots else None},
            "truncation": trunc,
            "versions": library_versions(),
            "seed": cfg.seed,
            "device": dev,
            "training": {
                "global_steps": trainer.state.global_step,
                "epochs": trainer.state.epoch,
                "train_loss": result.training_loss,
                "final_loss": loss_curve[-1][1] if loss_curve else None,
                "loss_curve": loss_curve,
                "wall_time_s": round(wall, 2),
                "trained_tokens": tokens,
                "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
                "resumed_from_checkpoint": last,
                "effective_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
                * dev["world_size"],
            },
            "weight_deviation": deviation,
            "outputs": {
                "model_dir": str(out),
                "adapter_dir": str(out / ADAPTER_DIR) if cfg.use_peft else None,
                "lm_eval_model_args": [f"pretrained={out}"]
                + ([f"pretrained={model_path},peft={out / ADAPTER_DIR}"] if cfg.use_peft else []),
            },
            "argv": sys.argv,
            "finished_at": now_utc(),
        }
        write_json(out / MANIFEST, manifest)  # LAST: its presence means "finished"
        log(f"[genft] finished: {trainer.state.global_step} steps in {fmt_duration(wall)}, "
            f"{manifest['training']['tokens_per_s']} tok/s, final loss {manifest['training']['final_loss']}, "
            f"weight deviation {deviation['mean_abs_diff']:.3e}; model in {out}")
    if dev["world_size"] > 1:  # the others wait for the main process's saving, then every process ends together
        trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        try:
            trainer.end()
        except Exception:
            pass
    return manifest or {}
