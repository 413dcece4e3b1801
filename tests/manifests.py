"""Fine-tuning manifests for tests that do not train: complete, valid `genft.training.Manifest`s (what
finetune/sft.py writes), with the fields a test cares about set and plausible values for the rest."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from genft.training import Manifest


def fake_manifest(out: str | Path = "/nowhere", config: Mapping[str, Any] | None = None, config_hash: str = "c" * 64,
                  replicate_hash: str = "r" * 64, weights_sha256: str = "w" * 64, wall_time_s: float = 1.0,
                  tokens_per_s: float | None = 1000.0, global_steps: int = 1, mean_abs_diff: float = 1e-4,
                  bf16: bool = False, truncation: Mapping[str, int] | None = None,
                  steps: Mapping[str, Mapping] | None = None) -> Manifest:
    config = dict(config or {})
    method = "lora" if config.get("use_peft") else "full"
    trunc = {"examples": 8, "examples_demos_cut": 0, "demos_dropped": 0, "examples_input_cut": 0,
             "input_chars_cut": 0, "max_length": config.get("max_length", 128), "tokens": 400, "longest": 60,
             **(truncation or {})}
    return Manifest.model_validate({
        "genft_manifest_version": 2, "status": "finished", "config": config, "config_hash": config_hash,
        "replicate_hash": replicate_hash, "weights_sha256": weights_sha256,
        "model": {"name_or_path": str(config.get("model_name_or_path", "tiny")), "resolved": "/models/tiny",
                  "parameters": 100, "trainable_parameters": 10 if method == "lora" else 100, "method": method},
        "data": {"task": config.get("task", "sentiment"), "dataset": config.get("dataset", "builtin_products"),
                 "files": {"train_100.jsonl": "f" * 64}, "paths": {"train_100.jsonl": "/data/train_100.jsonl"},
                 "examples": trunc["examples"], "icl_shots": config.get("icl_shots", 0), "icl_demos": None},
        "truncation": trunc, "versions": {"python": "3", "torch": None}, "seed": config.get("seed", 42),
        "device": {"device": "cpu", "use_cpu": True, "bf16": bf16, "dtype": "float32", "precision": "float32 throughout",
                   "gpu": None, "torch_threads": 1, "world_size": 1},
        "training": {"global_steps": global_steps, "epochs": 1.0, "train_loss": 1.0, "final_loss": 1.0,
                     "loss_curve": [[1, 1.0]], "wall_time_s": wall_time_s, "trained_tokens": 100,
                     "tokens_per_s": tokens_per_s, "resumed_from_checkpoint": None,
                     "batching": {"padding_free": False, "reason": "padding_free is off"}, "lm_head": "target positions",
                     "mixed_precision": "no", "effective_batch_size": 4},
        "weight_deviation": {"mean_abs_diff": mean_abs_diff, "parameters": 100, "tensors_changed": 4},
        "steps": dict(steps or {}),
        "outputs": {"model_dir": str(out), "adapter_dir": None, "lm_eval_model_args": [f"pretrained={out}"]},
        "argv": ["finetune/sft.py"], "finished_at": "2026-12-01T00:00:00+00:00"})
