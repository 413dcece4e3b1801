"""One fine-tuning run: the output folder's state (new, resume, done or another run's), TRL's SFTTrainer, the
merged LoRA model, and the manifest written last."""
from __future__ import annotations

import fnmatch
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import models
from ..files import Busy, fmt_duration, hold_lock, now_utc, read_json_or_none, temp_target, write_json
from ..models import weights_fingerprint
from ..precision import PrecisionError, check_cpu_bf16
from .config import (
    ADAPTER_DIR,
    LOCK_FILE,
    LORA_DROPOUT_MASKS,
    OPERATIONAL,
    RUN_FILE,
    ConfigError,
    FinetuneConfig,
    config_dict,
    config_hash,
    launched_processes,
    validate,
)
from .batching import check_padding_free
from .manifest import (MANIFEST, MANIFEST_VERSION, DataInfo, DeviceInfo, Manifest, ManifestError, ModelInfo, Outputs,
                       TrainingInfo, Truncation, WeightDeviation, read_manifest, write_manifest)
from .lm_head import scored_positions_only
from .steps import finish_steps, make_step_callback
from .examples import build_examples, load_training_items

# ---------------------------------------------------------------- output folder state


def _diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "(same settings; the training data files changed)"


# What a run writes into its output folder (sft.py, TRL, transformers): everything else there is not genft's.
RUN_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
             "chat_template.jinja", "training_args.bin", RUN_FILE, MANIFEST, LOCK_FILE)
RUN_DIRS = (ADAPTER_DIR, "checkpoint-[0-9]*")


def _is_run_output(p: Path) -> bool:
    name = p.name
    if p.is_symlink():
        return False
    if p.is_dir():
        return any(fnmatch.fnmatchcase(name, pat) for pat in RUN_DIRS)
    target = temp_target(name)
    if target is not None:
        return target in (RUN_FILE, MANIFEST)
    if name == "README.md":  # TRL's model card (front matter with its tags); a README of someone else's is not
        try:
            head = p.read_text(encoding="utf-8", errors="replace")[:2000]
        except OSError:
            return False
        return head.startswith("---") and "generated_from_trainer" in head and "trl" in head
    return any(fnmatch.fnmatchcase(name, pat) for pat in RUN_FILES)


def foreign_files(out: Path) -> list[Path]:
    """What a fine-tuning output folder holds that no run wrote (a user's notes, another tool's files): genft
    never deletes these; a folder holding any is refused rather than cleared."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if not _is_run_output(p))


def output_state(out: Path, chash: str, cfg: FinetuneConfig) -> str:
    """'new', 'resume' or 'done'; raises ConfigError when OUT holds another run or unrelated files."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"output_dir: {out} exists and is not a folder")
    try:
        manifest = read_manifest(out / MANIFEST)
    except ManifestError as e:
        raise ConfigError(f"output_dir: {e}") from None
    started = None if manifest else read_json_or_none(out / RUN_FILE)
    if manifest is None and not isinstance(started, dict):
        # (a temporary file is another process of the same launch writing genft_run.json right now)
        if any(p.name != LOCK_FILE and not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out.iterdir()):
            raise ConfigError(f"output_dir: {out} is not empty and holds no genft run; choose another --output_dir")
        return "new"
    held_hash, held_config = ((manifest.config_hash, manifest.config) if manifest
                              else (started.get("config_hash"), started.get("config") or {}))
    if held_hash != chash:
        mine = {k: v for k, v in config_dict(cfg).items() if k not in OPERATIONAL}
        theirs = {k: v for k, v in held_config.items() if k not in OPERATIONAL}
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


class _CheckpointIsFinal(Exception):
    """Raised at the start of a resumed training whose checkpoint already holds its last step."""


def make_final_checkpoint_guard():
    """A callback that stops a resumed training before its first step when the checkpoint it resumed from is
    the last step (a run killed after its last save, before its manifest): transformers' loop would run one
    step past max_steps (its stop check follows a step).  The trainer has loaded the checkpoint's weights,
    optimizer and state by then (on every process, sharded or not)."""
    from transformers import TrainerCallback

    class FinalCheckpointGuard(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                raise _CheckpointIsFinal()

    return FinalCheckpointGuard()


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
    """GPU: bf16 mixed precision by default.  CPU: float32 by default; `bf16: true` is bf16 mixed precision as
    transformers' Trainer does it on a CPU (accelerate's bf16 autocast around the forward pass; the weights,
    their gradients and the optimizer state stay float32).  With LoRA, `dtype: bfloat16` also stores the frozen
    base weights in bf16 (they are never updated, so they need no float32 master copy; peft keeps the adapters,
    their gradients and optimizer state in float32) and turns the autocast on.  bf16 on a CPU without native
    bf16 is refused (genft.precision); so are full fine-tuning in bf16 / fp16 weights and fp16 on a CPU."""
    import torch

    gpu = torch.cuda.is_available()
    bf16_base = not gpu and cfg.dtype == "bfloat16" and cfg.use_peft
    if not gpu and cfg.dtype in ("bfloat16", "float16") and not bf16_base:
        raise ConfigError(f"dtype: {cfg.dtype} weights are not supported for CPU training"
                          f"{' (only LoRA keeps a bfloat16 base)' if cfg.dtype == 'bfloat16' else ''}; use float32 "
                          "(for bf16 on a CPU set bf16: true, mixed precision with float32 weights)")
    if bf16_base and cfg.bf16 is False:
        raise ConfigError("dtype: bfloat16 with bf16: false; a bfloat16 base trains its float32 adapters under bf16 "
                          "autocast: drop bf16: false, or use dtype float32")
    if not gpu and (cfg.bf16 or bf16_base):
        try:
            check_cpu_bf16("bf16" if cfg.bf16 else "dtype")
        except PrecisionError as e:
            raise ConfigError(str(e)) from None
    if bf16_base or cfg.bf16 is not None:
        bf16 = bf16_base or bool(cfg.bf16)
    else:
        bf16 = gpu and torch.cuda.is_bf16_supported()
    return {"device": "cuda" if gpu else "cpu", "use_cpu": not gpu, "bf16": bf16, "dtype": cfg.dtype or "float32",
            "precision": precision_of(bf16, cfg.dtype or "float32", cfg.use_peft),
            "gpu": torch.cuda.get_device_name(0) if gpu else None, "torch_threads": torch.get_num_threads(),
            "world_size": int(cfg.num_processes or 1)}


def precision_of(bf16: bool, dtype: str, lora: bool = False) -> str:
    """The training numerics in words (the manifest's device.precision)."""
    if bf16 and lora and dtype != "float32":
        return f"bf16 mixed precision (autocast; frozen base weights {dtype}, LoRA adapters, their gradients and " \
               "optimizer state float32)"
    if bf16:
        return f"bf16 mixed precision (autocast; {dtype} weights, gradients and optimizer state)"
    return f"{dtype} throughout"


def batching_for(cfg: FinetuneConfig, model, tokenizer, examples: list[dict], dev: dict, sharded: bool) -> dict:
    """Padding-free batches where asked for and checked equal to padded ones on a batch of the training
    examples (training.batching); padded otherwise, with the reason."""
    if not cfg.padding_free:
        return {"padding_free": False, "reason": "padding_free is off"}
    if cfg.per_device_train_batch_size < 2:
        return {"padding_free": False, "reason": "batches of one row hold no padding"}
    if sharded:  # the check needs the whole model in one process, which sharded training exists to avoid
        return {"padding_free": False, "reason": "sharded training (accelerate_config): not checked, so padded"}
    if dev["device"] == "cuda":
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}")  # where the trainer puts it anyway
    return check_padding_free(model, tokenizer, examples[:cfg.per_device_train_batch_size], dev["dtype"])


def weight_deviation(base: Mapping[str, Any], model) -> dict:
    """Mean absolute parameter difference from the base over all parameters (docs/study.md §4)."""
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


def run(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> Manifest | None:
    """Train (or resume, or skip a finished run).  Returns the manifest (None on a process of a launch other
    than the main one: that one writes it).  Raises ConfigError / DataError /
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
        manifest = read_manifest(out)
        missing = manifest.missing_steps(cfg.step_models)
        if missing:
            raise ConfigError(f"output_dir: {out} holds this finished run without the models at steps "
                              f"{', '.join(map(str, missing))} (step_models); delete {out} to train it again with them")
        log(f"[genft] {out} already holds this finished run (config {chash[:12]}); nothing to do")
        return manifest

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
    main_process = int(os.environ.get("RANK", "0") or 0) == 0
    lock = _lock_output(out) if main_process else None  # one launch per folder (its other processes follow it)
    try:
        if lock is not None:
            state = output_state(out, chash, cfg)  # again, now that no other launch can write here
            if state == "done":
                log(f"[genft] {out} was finished by another process meanwhile (config {chash[:12]}); nothing to do")
                return read_manifest(out)
        if state == "new" and main_process:  # one writer per launch
            write_json(out / RUN_FILE, {"config": config_dict(cfg), "config_hash": chash, "data": files,
                                        "started_at": now_utc()})
        return _train(cfg, out, chash, model_path, tokenizer, examples, trunc, files, paths, dev, log)
    finally:
        if lock is not None:
            lock.close()


def _lock_output(out: Path):
    """The output folder's lock, held while this launch trains into it: a second sft.py into the same folder
    (a re-run while the first still trains, a retried cluster job) is refused instead of training twice."""
    try:
        return hold_lock(out / LOCK_FILE)
    except Busy as e:
        raise ConfigError(f"output_dir: {out} is being trained into by another process ({e}); wait for it to "
                          "finish (then this run finds it done), or use another --output_dir") from None


def _train(cfg, out, chash, model_path, tokenizer, examples, trunc, files, paths, dev, log) -> Manifest | None:
    import torch
    from datasets import Dataset
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from .attention import use_example_attention
    from .dropout import use_mask_dropout
    from .trl_args import peft_config, sft_config

    dtype = getattr(torch, dev["dtype"])
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    sharded = bool(cfg.accelerate_config)  # no process holds the whole model: deviation from the saved files
    base = {} if sharded else {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
    n_params = sum(p.numel() for p in model.parameters())
    attention = use_example_attention(model)  # before the padding-free check, which then compares it with sdpa
    batching = batching_for(cfg, model, tokenizer, examples, dev, sharded)
    log(f"[genft] batches: {'padding-free' if batching['padding_free'] else 'padded'} ({batching['reason']}); "
        f"attention: {attention}")
    callbacks = [make_progress_callback(log), make_final_checkpoint_guard()] + (
        [make_step_callback(cfg.step_models, out, tokenizer, cfg.use_peft, log)] if cfg.step_models else [])
    trainer = SFTTrainer(model=model, args=sft_config(cfg, out, batching, dev), train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=peft_config(cfg), callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces the raw log dicts
    dropout = None
    if cfg.use_peft and cfg.lora_dropout > 0:
        dropout = f"{use_mask_dropout(trainer.model)} adapters, p {cfg.lora_dropout}, {LORA_DROPOUT_MASKS}"
    _check_prepared(trainer, examples, cfg, dev, log)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log(f"[genft] resuming from {last}")
    t0 = time.time()
    mixed_precision = str(trainer.accelerator.mixed_precision)  # what accelerate runs ("bf16", "no"): recorded
    # Under bf16 autocast peft would cast each adapter's input up to its float32 weights' dtype, and autocast would
    # cast it straight back to bf16 for the adapter's matmul: left as it comes, the input reaches the adapter's
    # dropout and matmul in bf16 (the matmul sees the same values; dropout's scaled ones are rounded to bf16 once).
    adapter_inputs = disable_input_dtype_casting(trainer.model, active=bool(cfg.use_peft and dev["bf16"]))
    with scored_positions_only() as lm_head, adapter_inputs:
        log(f"[genft] LM head in the loss: at {lm_head}; {dev['precision']}; accelerate's mixed precision: "
            f"{mixed_precision}")
        try:
            train_loss = trainer.train(resume_from_checkpoint=last).training_loss
        except _CheckpointIsFinal:
            train_loss = None  # (the mean loss over the steps of an earlier, killed process: not known)
            log(f"[genft] {last} holds the last step ({trainer.state.global_step}/{trainer.state.max_steps}): "
                "saving it, no step trained")
    wall = time.time() - t0
    tokens = trainer.state.num_input_tokens_seen - (trainer._initial_num_input_tokens_seen
                                                    if hasattr(trainer, "_initial_num_input_tokens_seen") else 0)
    loss_curve = [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h]
    training = TrainingInfo(
        global_steps=trainer.state.global_step, epochs=trainer.state.epoch, train_loss=train_loss,
        final_loss=loss_curve[-1][1] if loss_curve else None, loss_curve=loss_curve, wall_time_s=round(wall, 2),
        trained_tokens=tokens, tokens_per_s=round(tokens / wall, 2) if wall > 0 else None,
        resumed_from_checkpoint=last, batching=batching, lm_head=lm_head, mixed_precision=mixed_precision,
        lora_dropout=dropout, attention=attention,
        effective_batch_size=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * dev["world_size"])

    manifest = None
    if not cfg.use_peft:
        trainer.save_model(str(out))  # on every process: a sharded model is gathered; only the main one writes
    if trainer.is_world_process_zero():
        final = _save_final(trainer, tokenizer, out, cfg.use_peft)
        deviation = (weight_deviation_from_files(model_path, out, dtype, cfg.trust_remote_code) if sharded
                     else weight_deviation(base, final))
        steps = finish_steps(cfg.step_models or [], out, model_path, dtype, tokenizer, cfg.use_peft,
                             cfg.trust_remote_code)
        if not cfg.keep_checkpoints:
            for ck in out.glob("checkpoint-*"):
                shutil.rmtree(ck, ignore_errors=True)
        manifest = _manifest(cfg, out, chash, files, paths, model_path, dev, trunc, training, deviation, steps,
                             {"parameters": n_params, "trainable_parameters": trainable, "examples": len(examples)})
        write_manifest(out, manifest)  # LAST: its presence means "finished"
        log(f"[genft] finished: {training.global_steps} steps in {fmt_duration(wall)}, {training.tokens_per_s} tok/s, "
            f"final loss {training.final_loss}, weight deviation {deviation['mean_abs_diff']:.3e}; model in {out}")
    if dev["world_size"] > 1:  # the others wait for the main process's saving, then every process ends together
        trainer.accelerator.wait_for_everyone()
    trainer.end()  # the process group is destroyed on every process (a process left holding it can hang at exit)
    return manifest


def _check_prepared(trainer, examples: list[dict], cfg: FinetuneConfig, dev: Mapping, log) -> None:
    """TRL truncates the end of long rows and drops rows left with no target: the pre-truncation must have made
    both impossible.  Check, rather than trust."""
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


def _save_final(trainer, tokenizer, out: Path, lora: bool):
    """LoRA: the adapter in OUT/adapter and the merged weights in OUT (full fine-tuning was saved by the
    trainer).  Returns the final model."""
    if not lora:
        return trainer.model
    adapter_dir = out / ADAPTER_DIR
    trainer.model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return merged


def _manifest(cfg: FinetuneConfig, out: Path, chash: str, files: Mapping, paths: Mapping, model_path: str,
              dev: Mapping, trunc: Mapping, training: TrainingInfo, deviation: Mapping, steps: Mapping,
              counts: Mapping) -> Manifest:
    """The finished run's manifest (counts: the model's parameters and trainable parameters, the examples)."""
    lora = cfg.use_peft
    return Manifest(
        manifest_version=MANIFEST_VERSION, status="finished", config=config_dict(cfg), config_hash=chash,
        replicate_hash=config_hash(cfg, files, seed=False), weights_sha256=weights_fingerprint(out),
        model=ModelInfo(name_or_path=cfg.model_name_or_path, resolved=model_path, parameters=counts["parameters"],
                        trainable_parameters=counts["trainable_parameters"], method="lora" if lora else "full"),
        data=DataInfo(task=cfg.task, dataset=cfg.dataset, files=dict(files), paths=dict(paths),
                      examples=counts["examples"], icl_shots=cfg.icl_shots,
                      icl_demos=cfg.icl_demos if cfg.icl_shots else None),
        truncation=Truncation(**trunc), versions=library_versions(), seed=cfg.seed, device=DeviceInfo(**dev),
        training=training, weight_deviation=WeightDeviation(**deviation), steps=dict(steps),
        outputs=Outputs(model_dir=str(out), adapter_dir=str(out / ADAPTER_DIR) if lora else None,
                        lm_eval_model_args=[f"pretrained={out}"]
                        + ([f"pretrained={model_path},peft={out / ADAPTER_DIR}"] if lora else [])),
        argv=sys.argv, finished_at=now_utc())
