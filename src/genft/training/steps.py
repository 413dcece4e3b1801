"""Intermediate models, for learning-forgetting curves: with `step_models: [N, ...]` the model as it is after
optimizer step N is kept as a model folder of its own, `OUT/steps/step-<N>/` (for LoRA: the merged weights,
and its adapter in `adapter/`), which lm-eval loads like the final one.  The manifest lists them under
`steps` with their weights' fingerprints; a finished run without a requested step is named, never silently
completed.  Saving a model does not change training, so the steps are no part of the recipe hash.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

from ..models import weights_fingerprint
from .config import ADAPTER_DIR, ConfigError

STEPS_DIR = "steps"


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / STEPS_DIR / f"step-{step}"


def _save(model, tokenizer, dest: Path, lora: bool) -> None:
    """Through a temporary folder and a rename: a step folder is complete or absent."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    target = tmp / ADAPTER_DIR if lora else tmp
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def make_step_callback(steps: Sequence[int], out: Path, tokenizer, lora: bool, log: Callable[[str], None]):
    from transformers import TrainerCallback

    wanted = set(steps)

    class SaveSteps(TrainerCallback):
        """Saves the model after each requested optimizer step (the main process only)."""

        def on_train_begin(self, args, state, control, **kw):
            over = [s for s in sorted(wanted) if s > state.max_steps]
            if over:
                raise ConfigError(f"step_models: step {over[0]} is beyond this run's {state.max_steps} optimizer "
                                  "steps")

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in wanted and state.is_world_process_zero:
                _save(model, tokenizer, step_dir(out, state.global_step), lora)
                log(f"[genft] saved the model at step {state.global_step} in {step_dir(out, state.global_step)}")

    return SaveSteps()


def finish_steps(steps: Sequence[int], out: Path, model_path: str, dtype, tokenizer, lora: bool,
                 trust_remote_code: bool = False) -> dict:
    """After training: merge each LoRA step's adapter into the base weights; the manifest's `steps`
    ({step: {path, weights_sha256}})."""
    info = {}
    for s in steps:
        d = step_dir(out, s)
        if not d.is_dir():
            raise RuntimeError(f"{d}: the model at step {s} was not saved; run the same command again to resume")
        if lora:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
            merged = PeftModel.from_pretrained(base, str(d / ADAPTER_DIR)).merge_and_unload()
            merged.save_pretrained(str(d), safe_serialization=True)
            tokenizer.save_pretrained(str(d))
        info[str(s)] = {"step": s, "path": str(d), "weights_sha256": weights_fingerprint(d)}
    return info
