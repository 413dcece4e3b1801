"""What runs in an arm's own process (benchmarks/finetune_speed.py): the arms, and the instrumentation that
measures every arm one way.

`worker` is the process's entry (`finetune_speed.py --worker SPEC`): it reads the arm's spec (written by
benchmarks/finetune_bench.py), wraps `Trainer.train` (`instrument`), trains the arm (genft's own path:
`run_genft`; a plain transformers.Trainer loop: `run_plain`) and writes the arm's record where the spec says.
The arms and the pairs they are compared in are named here; finetune_speed.py's docstring says what each arm
does.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from roofline import model_sizes

# genft's arms by precision (the settings each changes in its config), compared with each other: the genft arm
# in float32, in bf16 mixed precision, and in bf16 with LoRA's frozen base stored in bf16 (training.runner's
# device_settings says what each runs).
PRECISION_ARMS = {"genft-fp32": {"bf16": None}, "genft-bf16": {"bf16": True},
                  "genft-bf16-base": {"bf16": True, "dtype": "bfloat16"}}
ARMS = ("genft", "genft-padded", "trainer", "trainer-padfree", *PRECISION_ARMS)
GENFT_ARMS = ("genft", "genft-padded", *PRECISION_ARMS)
# genft's arms and the plain loop's arm they are compared with: the target, then batching for batching.
PAIRS = (("genft", "trainer"), ("genft", "trainer-padfree"), ("genft-padded", "trainer"))
PROFILE_ROWS = 10  # shown per arm
PROFILE_KEEP = 60  # kept per arm, for the genft - trainer differences


# --------------------------------------------------------------------------- instrumentation (in an arm's process)


def _rss_mib() -> float:
    """This process's peak resident set size so far, in MiB: Linux's VmHWM (the high-water mark of this
    process's own memory).  Not getrusage's ru_maxrss: Linux carries that over fork + exec, so a fresh arm
    process would report its parent's peak (the main process, with torch and the matmul probe loaded) whenever
    that is larger.  Where /proc is absent, ru_maxrss is the fallback."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def instrument(record: dict, profile: bool = False) -> None:
    """Wrap transformers.Trainer.train (class level: SFTTrainer inherits it) to measure every arm one way."""
    import torch
    from transformers import Trainer, TrainerCallback

    original = Trainer.train

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            record["step_s"].append(time.perf_counter() - self.t0)

    def train(self, *args, **kwargs):
        if record.get("trained"):
            raise RuntimeError("train() called twice in one arm process")
        record.update(trained=True, step_s=[], batches=[], losses=[])
        model = self.model
        record["sizes"] = model_sizes(model)
        cfg = getattr(model, "config", None) or model.get_base_model().config
        record["attn_implementation"] = getattr(cfg, "_attn_implementation", None)
        record["activation_checkpointing"] = bool(getattr(self.args, "activation_checkpointing", False)
                                                  or getattr(model, "is_gradient_checkpointing", False))
        record["optim"] = getattr(self.args.optim, "value", str(self.args.optim))
        record["bf16"] = bool(self.args.bf16)
        record["torch_threads"] = torch.get_num_threads()
        inner = self.training_step

        def training_step(model, inputs, *a, **k):
            labels = inputs["labels"]
            if "attention_mask" in inputs:
                n_in = int(inputs["attention_mask"].sum())
                padded = int(inputs["input_ids"].numel())
            else:  # flattened (padding-free): every position is a token
                n_in = padded = int(inputs["input_ids"].numel())
            n_tgt = int((labels[..., 1:] != -100).sum())
            loss = inner(model, inputs, *a, **k)
            record["batches"].append({"input": n_in, "target": n_tgt, "positions": padded,
                                      "rows": int(inputs["input_ids"].shape[0])})
            record["losses"].append(float(loss.detach()))
            return loss

        self.training_step = training_step
        self.add_callback(StepTimer())
        prof = None
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            prof = torch_profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        t0 = time.perf_counter()
        try:
            out = original(self, *args, **kwargs)
        finally:
            record["train_s"] = time.perf_counter() - t0
            if prof is not None:
                prof.__exit__(None, None, None)
                record["profile"] = profile_rows(prof, record["train_s"], PROFILE_KEEP)
        record["rss_train_mib"] = _rss_mib()
        record["global_steps"] = self.state.global_step
        return out

    Trainer.train = train


def profile_rows(prof, wall_s: float, n: int = PROFILE_ROWS) -> list[dict]:
    """The top-n operators by self CPU time (torch.profiler), with their share of the profiled train() time."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    return [{"name": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count,
             "share_of_self": (e.self_cpu_time_total / 1e6) / total if total else 0.0,
             "share_of_wall": (e.self_cpu_time_total / 1e6) / wall_s if wall_s else 0.0}
            for e in events[:n]]


# --------------------------------------------------------------------------- the arms (in their own process)


def plain_rows(tokenizer, examples: list[dict]) -> list[dict]:
    """prompt+completion+EOS tokenized as one string (as TRL does); labels -100 up to where the prompt's own
    tokens stop being a prefix of the whole (TRL's common_prefix_length rule)."""
    eos = tokenizer.eos_token
    rows = []
    for ex in examples:
        completion = ex["completion"] if ex["completion"].endswith(eos) else ex["completion"] + eos
        ids = tokenizer(text=ex["prompt"] + completion)["input_ids"]
        prompt_ids = tokenizer(text=ex["prompt"])["input_ids"]
        n = 0
        while n < min(len(ids), len(prompt_ids)) and ids[n] == prompt_ids[n]:
            n += 1
        rows.append({"input_ids": ids, "labels": [-100] * n + ids[n:]})
    return rows


def run_plain(spec: dict) -> dict:
    """The trainer and trainer-padfree arms: a plain transformers.Trainer loop on the shared examples (see
    finetune_speed.py's docstring); returns the Trainer's own count of input tokens."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    if tokenizer.pad_token is None:  # TRL's choice: the EOS token pads
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # left padding would shift the positions of every padded row
    examples = json.loads(Path(spec["examples"]).read_text())
    rows = plain_rows(tokenizer, examples)
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    model.config.use_cache = False  # no KV cache while training (TRL passes use_cache=False as well)
    if spec["lora"]:
        from peft import LoraConfig, get_peft_model

        set_seed(spec["seed"])  # as SFTTrainer does before get_peft_model: the same adapter initialisation
        model = get_peft_model(model, LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"],
                                                 lora_dropout=spec["lora_dropout"], target_modules="all-linear",
                                                 task_type="CAUSAL_LM", bias="none"))
    if spec["arm"] == "trainer-padfree":
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    args = TrainingArguments(
        output_dir=spec["output_dir"], learning_rate=spec["learning_rate"], max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, seed=spec["seed"], data_seed=spec["seed"],
        bf16=bool(spec.get("bf16")) or (gpu and torch.cuda.is_bf16_supported()), use_cpu=not gpu, logging_steps=1, save_strategy="steps",
        save_steps=spec["save_steps"], save_total_limit=2, report_to="none", disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", activation_checkpointing=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
                      processing_class=tokenizer)
    trainer.train()
    return {"num_input_tokens_seen": trainer.state.num_input_tokens_seen}


def run_genft(spec: dict) -> dict:
    """The genft arms (GENFT_ARMS): genft.training.run on spec["genft_config"]; returns the figures of its
    manifest."""
    from genft import training

    cfg = training.FinetuneConfig(**spec["genft_config"])
    manifest = training.run(cfg)
    t = manifest.training
    return {"manifest": {"tokens_per_s": t.tokens_per_s, "trained_tokens": t.trained_tokens,
                         "wall_time_s": t.wall_time_s, "global_steps": t.global_steps,
                         "final_loss": t.final_loss, "truncation_tokens": manifest.truncation.tokens,
                         "examples": manifest.data.examples,
                         "batching": t.batching.model_dump() if t.batching else None, "lm_head": t.lm_head,
                         "precision": manifest.device.precision, "lora_dropout": t.lora_dropout,
                         "loss_curve": t.loss_curve}}


def worker(spec_path: str) -> int:
    """An arm's process: train the arm the spec at `spec_path` names, measured by `instrument`, and write its
    record (with the process's RSS at the start and end) to spec["result"]."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    record: dict = {"arm": spec["arm"], "rss_start_mib": _rss_mib()}
    instrument(record, profile=spec.get("profile", False))
    extra = run_genft(spec) if spec["arm"] in GENFT_ARMS else run_plain(spec)
    record.update(extra)
    record["rss_end_mib"] = _rss_mib()
    Path(spec["result"]).write_text(json.dumps(record))
    return 0

