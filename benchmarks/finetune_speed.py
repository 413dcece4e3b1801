#!/usr/bin/env python
"""Fine-tuning speed: genft's `finetune/sft.py` path against a plain `transformers.Trainer` loop.

Every arm trains the SAME prompt/completion examples (genft.training.build_examples for --task / --dataset /
--train-limit, built once here and handed to every arm), the same model, batch size, number of optimizer steps,
LoRA or full setting (the study-cpu recipe by default: LoRA r16 alpha 32 dropout 0.05 all-linear, lr 2e-4,
AdamW with a linear schedule, no warm-up, batch 8, max_length 512) and thread count.  Each run of an arm is
a fresh subprocess, so its peak RSS is its own and nothing leaks between arms; runs are repeated --reps
times with the order of the arms rotated, and medians are reported.

Arms:
  genft            genft.training.run (what finetune/sft.py runs): TRL's SFTTrainer, completion-only loss,
                   padding-free batches (its default, after its check that a batch gives the same loss padded
                   and flattened), TRL's fused LM head (no full logits), which genft.training.lm_head makes
                   project only the target positions on the CPU too (TRL projects every position off Triton).
                   Its manifest's tokens/s is reported next to the common measure.
  genft-padded     the same with --padding_free false: rows padded to the longest in the batch.
  trainer          a plain transformers.Trainer: prompt+completion+EOS tokenized here as one string (the prompt
                   boundary found the way TRL finds it), labels -100 on the prompt, DataCollatorForSeq2Seq
                   padding to the longest in the batch (right side), the model's own loss (full logits);
                   peft LoRA wrapped as TRL wraps it (set_seed, then get_peft_model).
  trainer-padfree  the same without padding: transformers' DataCollatorWithFlattening (one row per batch,
                   position_ids restarting at every example, no attention mask: the model builds a
                   block-diagonal causal mask from the position_ids).

One measure for every arm: `Trainer.train` is wrapped (class level, in the arm's process) to time the whole
train() call (dataloader, steps, logging, the end-of-training checkpoint both arms write; not model loading,
not genft's merging and saving afterwards), a callback times each optimizer step (forward + backward + clip +
AdamW), and `training_step` is wrapped to count what each batch holds: input tokens (non-padding: the
attention mask's sum, or every token of a flattened batch) and target tokens (labels != -100 after the
causal shift), and to record each step's loss.  tokens/s = input tokens / train() seconds.

FLOPs ("% matmul"): per input token c * N_body, plus c * N_head per target token (the least work: the lm_head
is needed at target positions only), plus 6 * N_lora per input token for LoRA's own matrices; c = 6 for full
fine-tuning (forward 2N, backward 2N for activation gradients and 2N for weight gradients) and c = 4 for LoRA
(the frozen weights need no weight gradients).  N_body: parameters other than the embedding and lm_head
(tied or not).  Attention's score and value products (which grow with the sequence length) are ignored.  The
achieved FLOP/s is shown as a share of the machine's matmul FLOP/s measured here at the same threads
(benchmarks/eval_speed.py's machine_peaks) in the dtype the matmuls run in: fp32, or with --dtype bfloat16
(every arm in bf16 mixed precision: TrainingArguments/SFTConfig bf16=True, autocast on the CPU) bf16.

Checks (a failure is written into the report and the exit status is 1): every arm processes the same input
and target tokens; the first-step losses of genft and trainer (and of trainer-padfree) agree within --tol
(the first step sees the base model: LoRA's B matrices start at zero); genft's manifest counts the same
tokens as the wrapper.

    python benchmarks/finetune_speed.py                               # the study-cpu recipe, 2 threads, 3 runs
    python benchmarks/finetune_speed.py --quick --threads 1           # a busy machine / a smoke run
    python benchmarks/finetune_speed.py --model tiny --threads 1 --quick --out /tmp/ft.md --json /tmp/ft.json
    python benchmarks/finetune_speed.py --dtype bfloat16              # bf16 mixed precision, shares of the bf16 peak

The report is the `finetune_speed` section of --out (reports/benchmarks.md), between
`<!-- finetune_speed:start -->` and `<!-- finetune_speed:end -->` (a bf16 run: `finetune_speed:bfloat16`); the
rest of the file is left as it is.
Data: --data-dir or $GENFT_DATA_DIR; if the data set is not there, the study's release (the folder
--study-data names) is imported into a temporary folder, else genft's builtin training set of the task is written.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from eval_speed import machine_peaks, model_sizes  # noqa: E402
from report_section import write_section  # noqa: E402

SECTION = "finetune_speed"
ARMS = ("genft", "genft-padded", "trainer", "trainer-padfree")
GENFT_ARMS = ("genft", "genft-padded")
DEFAULT_ARMS = ARMS
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
    from genft import training

    cfg = training.FinetuneConfig(**spec["genft_config"])
    manifest = training.run(cfg)
    t = manifest.training
    return {"manifest": {"tokens_per_s": t.tokens_per_s, "trained_tokens": t.trained_tokens,
                         "wall_time_s": t.wall_time_s, "global_steps": t.global_steps,
                         "final_loss": t.final_loss, "truncation_tokens": manifest.truncation.tokens,
                         "examples": manifest.data.examples,
                         "batching": t.batching.model_dump() if t.batching else None, "lm_head": t.lm_head}}


def worker(spec_path: str) -> int:
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


# --------------------------------------------------------------------------- the benchmark (main process)


def prepare_data(task: str, dataset: str | None, data_dir: str | None, study_data: str, train_limit: int,
                 train_size: int | None, scratch: Path, log=print) -> dict:
    """Find the training data (or create it under `scratch`, a folder the caller deletes); returns root,
    dataset, train_size and where the data came from."""
    from genft import data as gdata

    root = gdata.data_dir(data_dir)
    name = dataset or gdata.train_dataset(task).name
    origin = str(root)
    if not gdata.dataset_dir(task, name, root).is_dir():
        info = gdata.get_dataset(task, name)
        study = info.source == "study" and Path(study_data).is_dir()
        if info.source == "study" and not study and dataset is not None:
            raise SystemExit(f"finetune_speed.py: {task}/{name} is not in {root} and the study's release is not at "
                             f"{study_data}: pass --data-dir, --study-data, or a builtin --dataset")
        tmp = scratch / "data"
        tmp.mkdir(parents=True)
        if study:
            log(f"{task}/{name} is not in {root}: importing the study's release from {study_data} into {tmp}")
            gdata.import_study(Path(study_data), tmp, log=lambda *_: None)
            origin = f"the study's release ({study_data}), imported"
        else:
            from genft.builtin import generate

            if info.source == "study":
                name = gdata.train_dataset(task, "builtin").name
            log(f"no study data: writing genft's builtin data sets into {tmp} (training on {task}/{name})")
            generate(tmp, log=lambda *_: None)
            origin = "genft's builtin generator"
        root = tmp
    sizes = gdata.train_sizes(task, name, root)
    if train_size is None:
        fit = [s for s in sizes if s >= train_limit]
        if not fit:
            raise SystemExit(f"finetune_speed.py: {task}/{name} in {root} has no training file with >= {train_limit} "
                             f"items (sizes: {sizes or 'none'})")
        train_size = fit[0]
    return {"root": str(root), "dataset": name, "train_size": train_size, "origin": origin}


def build_shared_examples(cfg, log=print) -> tuple[list[dict], dict]:
    """genft's own examples (load_training_items + build_examples), the ones every arm trains on."""
    from transformers import AutoTokenizer

    from genft import models, training

    items, pool, _files, _paths = training.load_training_items(cfg)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(cfg.model_name_or_path))
    examples, _demos, trunc = training.build_examples(cfg, tokenizer, items, pool, log)
    return examples, trunc


def _spawn(spec: dict, work: Path, threads: int, log) -> dict:
    spec_path = work / f"{spec['tag']}.spec.json"
    spec["result"] = str(work / f"{spec['tag']}.result.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"), HF_DATASETS_OFFLINE=env.get("HF_DATASETS_OFFLINE", "1"),
               TRANSFORMERS_VERBOSITY=env.get("TRANSFORMERS_VERBOSITY", "error"))
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = work / f"{spec['tag']}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    if rc != 0 or not Path(spec["result"]).is_file():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"arm {spec['arm']} ({spec['tag']}) failed with exit status {rc}; its output ends:\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    result["process_s"] = time.perf_counter() - t0
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # genft's merged model, checkpoints
    return result


def flops_per_run(sizes: dict, input_tokens: int, target_tokens: int, lora: bool) -> float:
    """Training FLOPs of a run (see the module docstring)."""
    c = 4 if lora else 6
    return c * sizes["body"] * input_tokens + c * sizes["head"] * target_tokens + 6 * sizes["lora"] * input_tokens


def benchmark(opts: dict, log=print) -> dict:
    """Run every arm opts['reps'] times (fresh processes, order rotated) and return the raw results + checks.

    opts: model, threads, task, dataset, data_dir, study_data, train_limit, train_size, steps, batch_size,
    max_length, lora, lora_r, lora_alpha, lora_dropout, learning_rate, seed, reps, arms, tol, profile
    ('auto' | 'always' | 'never')."""
    from genft import models, training

    arms = list(opts["arms"])
    work = Path(tempfile.mkdtemp(prefix="genft-ftbench-"))
    try:
        data = prepare_data(opts["task"], opts["dataset"], opts["data_dir"], opts["study_data"], opts["train_limit"],
                            opts["train_size"], work, log)
        model_path = models.resolve(opts["model"])
        genft_config = dict(
            task=opts["task"], dataset=data["dataset"], train_size=data["train_size"], train_limit=opts["train_limit"],
            data_dir=data["root"], model_name_or_path=model_path, output_dir=str(work / "check"),
            use_peft=opts["lora"], lora_r=opts["lora_r"], lora_alpha=opts["lora_alpha"],
            lora_dropout=opts["lora_dropout"], lora_target_modules=["all-linear"] if opts["lora"] else None,
            learning_rate=opts["learning_rate"], max_steps=opts["steps"],
            per_device_train_batch_size=opts["batch_size"], gradient_accumulation_steps=1,
            lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_length=opts["max_length"],
            seed=opts["seed"], logging_steps=1, save_steps=opts["steps"], torch_threads=opts["threads"],
            bf16=True if opts.get("dtype") == "bfloat16" else None,
        )
        cfg = training.validate(training.FinetuneConfig(**genft_config))
        examples, trunc = build_shared_examples(cfg, log)
        (work / "examples.json").write_text(json.dumps(examples))
        log(f"{len(examples)} examples ({trunc['tokens']} tokens, longest {trunc['longest']}); arms: {', '.join(arms)}")

        peaks = machine_peaks(opts["threads"], dtype=opts.get("dtype", "float32"))
        log(f"machine: {peaks['flops'] / 1e9:.0f} GFLOP/s {_label(peaks)} matmul, {peaks['bandwidth'] / 1e9:.1f} GB/s "
            f"read ({opts['threads']} threads)")
        load_before = os.getloadavg()
        started = time.time()

        def spec_for(arm: str, tag: str, profile: bool = False) -> dict:
            out = work / tag
            return {"arm": arm, "tag": tag, "threads": opts["threads"], "model_path": model_path,
                    "examples": str(work / "examples.json"), "output_dir": str(out), "lora": opts["lora"],
                    "lora_r": opts["lora_r"], "lora_alpha": opts["lora_alpha"], "lora_dropout": opts["lora_dropout"],
                    "learning_rate": opts["learning_rate"], "steps": opts["steps"], "batch_size": opts["batch_size"],
                    "seed": opts["seed"], "save_steps": opts["steps"], "profile": profile,
                    "bf16": opts.get("dtype") == "bfloat16",
                    "genft_config": dict(genft_config, output_dir=str(out), padding_free=arm != "genft-padded")}

        runs: dict[str, list[dict]] = {a: [] for a in arms}
        for rep in range(opts["reps"]):
            order = arms[rep % len(arms):] + arms[: rep % len(arms)]
            for arm in order:
                r = _spawn(spec_for(arm, f"{arm}-{rep}"), work, opts["threads"], log)
                runs[arm].append(r)
                tok = sum(b["input"] for b in r["batches"])
                log(f"run {rep + 1} {arm}: train() {r['train_s']:.1f}s, {tok / r['train_s']:.0f} tok/s, "
                    f"first loss {r['losses'][0]:.4f}, peak RSS {r['rss_train_mib']:.0f} MiB")
        load_after = os.getloadavg()
        total = time.time() - started

        summary, failures = summarize(runs, peaks, opts, trunc)
        ratio = None
        if "genft" in summary and "trainer" in summary:
            ratio = summary["genft"]["tokens_per_s"] / summary["trainer"]["tokens_per_s"]
        met = ratio is not None and ratio >= 1.0
        profiles = {}
        for arm in dict.fromkeys(a for pair in profile_pairs(summary, opts["profile"]) for a in pair):
            log(f"profiling {arm} (one more run under torch.profiler)")
            profiles[arm] = _spawn(spec_for(arm, f"{arm}-profile", profile=True), work, opts["threads"], log)
        return {"opts": opts, "data": data, "model_path": model_path, "examples": len(examples), "truncation": trunc,
                "peaks": peaks, "load_before": load_before, "load_after": load_after, "wall_s": total,
                "runs": runs, "summary": summary, "failures": failures, "ratio": ratio, "met": met,
                "profiles": {a: {"profile": p.get("profile"), "train_s": p["train_s"]} for a, p in profiles.items()}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _label(peaks: dict) -> str:
    return "bf16" if peaks.get("dtype") == "bfloat16" else "fp32"


def summarize(runs: dict, peaks: dict, opts: dict, trunc: dict) -> tuple[dict, list[str]]:
    failures: list[str] = []
    summary = {}
    ref_counts = None
    for arm, rs in runs.items():
        counts = [(sum(b["input"] for b in r["batches"]), sum(b["target"] for b in r["batches"]),
                   len(r["batches"])) for r in rs]
        if len(set(counts)) != 1:
            failures.append(f"{arm}: its runs processed different token counts {sorted(set(counts))}")
        n_in, n_tgt, n_batches = counts[0]
        if ref_counts is None:
            ref_counts = (arm, counts[0])
        elif counts[0] != ref_counts[1]:
            failures.append(f"{arm} processed {n_in} input / {n_tgt} target tokens in {n_batches} batches, "
                            f"{ref_counts[0]} {ref_counts[1][0]} / {ref_counts[1][1]} in {ref_counts[1][2]}")
        if any(r["global_steps"] != opts["steps"] for r in rs):
            failures.append(f"{arm}: ran {[r['global_steps'] for r in rs]} optimizer steps, not {opts['steps']}")
        sizes = rs[0]["sizes"]
        train_s = statistics.median(r["train_s"] for r in rs)
        step_s = statistics.median(sum(r["step_s"]) for r in rs)
        flops = flops_per_run(sizes, n_in, n_tgt, opts["lora"])
        positions = rs[0]["batches"]
        s = {
            "tokens_per_s": n_in / train_s, "tokens_per_s_steps": n_in / step_s, "train_s": [r["train_s"] for r in rs],
            "train_s_median": train_s, "step_s_median": step_s, "input_tokens": n_in, "target_tokens": n_tgt,
            "positions": sum(b["positions"] for b in positions), "batches": n_batches,
            "rss_train_mib": statistics.median(r["rss_train_mib"] for r in rs),
            "rss_end_mib": statistics.median(r["rss_end_mib"] for r in rs),
            "first_loss": rs[0]["losses"][0], "first_losses": [r["losses"][0] for r in rs],
            "final_loss": rs[0]["losses"][-1], "final_losses": [r["losses"][-1] for r in rs],
            "flops": flops, "matmul_share": flops / train_s / peaks["flops"],
            "matmul_share_steps": flops / step_s / peaks["flops"], "sizes": sizes,
            "attn_implementation": rs[0]["attn_implementation"], "optim": rs[0]["optim"],
            "activation_checkpointing": rs[0]["activation_checkpointing"], "torch_threads": rs[0]["torch_threads"],
            "bf16": rs[0]["bf16"],
        }
        if arm in GENFT_ARMS:
            m = [r["manifest"] for r in rs]
            s["batching"] = m[0]["batching"]
            s["lm_head"] = m[0]["lm_head"]
            if m[0]["batching"]["padding_free"] != (arm == "genft"):
                failures.append(f"{arm}: trained with {'padding-free' if m[0]['batching']['padding_free'] else 'padded'} "
                                f"batches ({m[0]['batching']['reason']})")
            s["manifest_tokens_per_s"] = statistics.median(x["tokens_per_s"] for x in m)
            s["manifest_trained_tokens"] = m[0]["trained_tokens"]
            if any(x["trained_tokens"] != n_in for x in m):
                failures.append(f"{arm}: the manifest's trained_tokens {[x['trained_tokens'] for x in m]} differ from "
                                f"the {n_in} input tokens counted in its batches")
            if m[0]["truncation_tokens"] != trunc["tokens"] or m[0]["examples"] != trunc["examples"]:
                failures.append(f"{arm} built other examples than the shared ones ({m[0]['examples']} examples, "
                                f"{m[0]['truncation_tokens']} tokens vs {trunc['examples']} / {trunc['tokens']})")
        summary[arm] = s
    for key in ("activation_checkpointing", "torch_threads", "bf16", "optim"):
        if len({s[key] for s in summary.values()}) > 1:
            failures.append(f"the arms ran with different {key}: " + ", ".join(f"{a} {s[key]}" for a, s in summary.items()))
    if len({s["sizes"]["trainable"] for s in summary.values()}) > 1:
        failures.append("the arms train different numbers of parameters: "
                        + ", ".join(f"{a} {s['sizes']['trainable']}" for a, s in summary.items()))
    if "trainer" in summary:
        ref = summary["trainer"]["first_loss"]
        for arm in [a for a in summary if a != "trainer"]:
            d = abs(summary[arm]["first_loss"] - ref)
            summary[arm]["first_loss_diff"] = d
            if d > opts["tol"]:
                failures.append(f"first-step loss of {arm} {summary[arm]['first_loss']:.6f} differs from trainer's "
                                f"{ref:.6f} by {d:.2e} > --tol {opts['tol']:g}")
    return summary, failures


# --------------------------------------------------------------------------- the report


# genft's arms and the plain loop's arm they are compared with: the target, then batching for batching.
PAIRS = (("genft", "trainer"), ("genft", "trainer-padfree"), ("genft-padded", "trainer"))


def profile_pairs(summary: dict, mode: str) -> list[tuple[str, str]]:
    """The (genft arm, trainer arm) pairs to profile: "always" every pair that ran, "auto" those where the
    genft arm is the slower one, "never" none."""
    ran = [(a, b) for a, b in PAIRS if a in summary and b in summary]
    if mode == "always":
        return ran
    if mode == "auto":
        return [(a, b) for a, b in ran if summary[a]["tokens_per_s"] < summary[b]["tokens_per_s"]]
    return []


def profile_diff(a: list[dict], b: list[dict], n: int = 8) -> list[tuple[str, float]]:
    """The n operators whose self CPU time differs most between two profiles (a - b), largest first."""
    sa = {r["name"]: r["self_s"] for r in a}
    sb = {r["name"]: r["self_s"] for r in b}
    # an operator missing from one kept list is below that list's cut: count it as 0 there
    d = {k: sa.get(k, 0.0) - sb.get(k, 0.0) for k in set(sa) | set(sb)}
    return sorted(d.items(), key=lambda kv: abs(kv[1]), reverse=True)[:n]


def _fmt_loss(x: float) -> str:
    return f"{x:.4f}"


def render(res: dict, command: str) -> str:
    import torch
    import transformers
    from tabulate import tabulate

    opts, summary, peaks = res["opts"], res["summary"], res["peaks"]
    sizes = next(iter(summary.values()))["sizes"]
    method = (f"LoRA r {opts['lora_r']} alpha {opts['lora_alpha']} dropout {opts['lora_dropout']} all-linear"
              if opts["lora"] else "full fine-tuning")
    c = 4 if opts["lora"] else 6
    gpu = torch.cuda.is_available()  # the arms then train there; the measured peaks are the CPU's
    rows = []
    for arm, s in summary.items():
        diff = s.get("first_loss_diff")
        rows.append([
            arm, f"{s['tokens_per_s']:.0f}", f"{s['tokens_per_s_steps']:.0f}",
            " / ".join(f"{t:.1f}" for t in s["train_s"]), f"{s['rss_train_mib']:.0f}",
            _fmt_loss(s["first_loss"]) + ("" if diff is None else f" (d {diff:.1e})"), _fmt_loss(s["final_loss"]),
            "n/a (GPU)" if gpu else f"{100 * s['matmul_share']:.1f}%", f"{s['input_tokens']} / {s['target_tokens']}",
            f"{s['positions']}", s["attn_implementation"],
        ])
    headers = ["arm", "tokens/s (median, train())", "tokens/s (steps only)", "train() s per run",
               "peak RSS MiB", "first-step loss (d vs trainer)", "final loss", "% matmul FLOP/s",
               "input / target tokens", "positions run", "attention"]
    vers = {}
    for name in ("trl", "peft", "accelerate"):
        try:
            vers[name] = __import__(name).__version__
        except ImportError:
            vers[name] = "absent"
    info = [
        ["date", dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")],
        ["model", f"{opts['model']} ({res['model_path']}); {sizes['body'] / 1e6:.2f}M body + {sizes['head'] / 1e6:.2f}M "
                  f"lm_head ({'tied' if sizes['tied'] else 'untied'}) + {sizes['lora'] / 1e6:.2f}M LoRA parameters; "
                  f"{sizes['trainable'] / 1e6:.2f}M trainable"],
        ["data", f"{opts['task']}/{res['data']['dataset']} train_{res['data']['train_size']}, first "
                 f"{opts['train_limit']} items ({res['data']['origin']}): {res['examples']} examples, "
                 f"{res['truncation']['tokens']} tokens, longest {res['truncation']['longest']}"],
        ["recipe", f"{method}, AdamW ({next(iter(summary.values()))['optim']}) lr {opts['learning_rate']:g} linear "
                   f"schedule, batch {opts['batch_size']}, {opts['steps']} optimizer steps, max_length "
                   f"{opts['max_length']}, seed {opts['seed']}, "
                   + ("bf16 mixed precision" if any(s["bf16"] for s in summary.values()) else "fp32")
                   + ", activation checkpointing "
                   + ("ON" if any(s["activation_checkpointing"] for s in summary.values()) else "off")],
        ["machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                    f"{platform.python_version()}"
                    + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")],
        ["measured peaks", f"{peaks['flops'] / 1e9:.0f} GFLOP/s {_label(peaks)} matmul (2048^3; the shares use it), "
                           f"{peaks['bandwidth'] / 1e9:.1f} GB/s memory read ({opts['threads']} threads)"],
        ["torch threads / runs", f"{opts['threads']} / {opts['reps']} per arm (fresh process each, arm order rotated)"],
        ["load average before / after", f"{res['load_before'][0]:.2f} / {res['load_after'][0]:.2f} (1 min)"],
        ["versions", f"torch {torch.__version__}, transformers {transformers.__version__}, trl {vers['trl']}, peft "
                     f"{vers['peft']}, accelerate {vers['accelerate']}"],
        ["benchmark wall time", f"{res['wall_s'] / 60:.1f} min"],
    ]
    lines = [
        "## Fine-tuning speed: genft (`finetune/sft.py`) and a plain `transformers.Trainer` loop"
        + (" in bf16 mixed precision" if opts.get("dtype") == "bfloat16" else ""),
        "",
        f"Generated by `{command}`.",
        "Every arm trains the same examples (genft's `build_examples`), same model, batch, steps, optimizer and",
        "threads, each run in a fresh process (see the script's docstring). tokens/s: non-padding input tokens",
        "(prompt + completion + EOS) over the wall time of `Trainer.train()` (dataloader, steps, logging and the",
        "end-of-training checkpoint both trainers write; not model loading, nor genft's merging and saving",
        "afterwards), median of the runs; 'steps only': the same over the optimizer steps' own time. Peak RSS:",
        "the arm process's own high-water mark (Linux VmHWM; not ru_maxrss, which Linux carries over from the parent",
        "process through fork + exec) when train() returns, model load included. '% matmul FLOP/s': training FLOPs",
        f"{c} x N_body per input token + {c} x N_head per target token"
        + (" + 6 x N_LoRA per input token" if opts["lora"] else "")
        + f" ({'LoRA: forward 2N + activation gradients 2N' if opts['lora'] else 'forward 2N + backward 4N'};",
        "attention's score/value products ignored) over the median train() time, as a share of the measured",
        "fp32 matmul FLOP/s. 'positions run': the token positions the model ran, padding included.",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        tabulate(info, headers=["", ""], tablefmt="github"),
        "",
    ]
    for arm in [a for a in GENFT_ARMS if a in summary]:
        g = summary[arm]
        lines += [f"{arm}'s own manifest: {g['manifest_tokens_per_s']:.0f} tokens/s (median; `training.tokens_per_s`, "
                  f"{g['manifest_trained_tokens']} `trained_tokens` over the same train() call timed with "
                  f"`time.time()`); the table uses the common measure above. Batches: {g['batching']['reason']}. "
                  f"LM head in the loss: at {g['lm_head']}.", ""]
    if "genft" in summary and "genft-padded" in summary:
        g, p = summary["genft"], summary["genft-padded"]
        lines += [f"Padding-free in genft: {g['tokens_per_s'] / p['tokens_per_s']:.2f}x the tokens/s of its padded "
                  f"batches, peak RSS {g['rss_train_mib'] - p['rss_train_mib']:+.0f} MiB, final loss "
                  f"{g['final_loss']:.6f} vs {p['final_loss']:.6f} padded.", ""]
    if "genft" in summary and "trainer" in summary:
        g, t = summary["genft"], summary["trainer"]
        base_mib = (sizes["total"] - sizes["lora"]) * 4 / 2**20
        lines += [f"Peak RSS: genft {g['rss_train_mib'] - t['rss_train_mib']:+.0f} MiB against the plain loop. "
                  "genft.training keeps a copy of the base weights through training (to report the weight deviation "
                  f"afterwards): {base_mib:.1f} MiB of fp32 weights here.", ""]
    if res["ratio"] is not None:
        verdict = "**met**" if res["met"] else "**missed**"
        lines += [f"**Target** (genft tokens/s >= the plain Trainer loop): {verdict}, genft / trainer = "
                  f"{res['ratio']:.2f}x (steps only "
                  f"{summary['genft']['tokens_per_s_steps'] / summary['trainer']['tokens_per_s_steps']:.2f}x)."]
        like = [(a, b) for a, b in (("genft", "trainer-padfree"), ("genft-padded", "trainer"))
                if a in summary and b in summary]
        if like:
            lines += ["Batching for batching: " + "; ".join(
                f"{a} / {b} = {summary[a]['tokens_per_s'] / summary[b]['tokens_per_s']:.2f}x" for a, b in like) + "."]
        lines += [""]
    if "trainer-padfree" in summary and "trainer" in summary:
        p, t = summary["trainer-padfree"], summary["trainer"]
        lines += [f"Padding-free (`DataCollatorWithFlattening`, {p['attn_implementation']} attention on "
                  f"{'GPU' if torch.cuda.is_available() else 'CPU'}): first-step loss {p['first_loss']:.6f} vs "
                  f"{t['first_loss']:.6f} padded (d {p.get('first_loss_diff', 0):.1e}), {p['positions']} positions run "
                  f"instead of {t['positions']}, {p['tokens_per_s'] / t['tokens_per_s']:.2f}x the padded loop's "
                  "tokens/s.", ""]
    profs = {a: p for a, p in res["profiles"].items() if p.get("profile")}
    for arm, prof in profs.items():
        top = prof["profile"][:PROFILE_ROWS]
        prow = [[r["name"], f"{r['self_s']:.2f}", f"{100 * r['share_of_wall']:.1f}%", r["calls"]] for r in top]
        lines += [f"Profile of the {arm} arm (torch.profiler, one extra run; train() took {prof['train_s']:.1f} s "
                  f"under the profiler), top {len(prow)} operators by self CPU time:", "",
                  tabulate(prow, headers=["operator", "self s", "share of train()", "calls"], tablefmt="github",
                           disable_numparse=True), ""]
    for a, b in [(a, b) for a, b in PAIRS if a in profs and b in profs]:
        diff = profile_diff(profs[a]["profile"], profs[b]["profile"])
        if diff:
            lines += [f"Where {a}'s profiled run spends more or less than {b}'s (self CPU s, {a} minus {b}, the "
                      f"largest {len(diff)}): " + ", ".join(f"`{name}` {d:+.2f}" for name, d in diff) + ".", ""]
    if res["failures"]:
        lines += ["**Check failures:** " + "; ".join(res["failures"]), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="smollm2-135m", help="a genft model name or a model folder")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (use 1 on a busy 2-core machine)")
    ap.add_argument("--task", default="sentiment", help="genft task (default: sentiment)")
    ap.add_argument("--dataset", default=None, help="training data set (default: the task's: sentiment -> amazon)")
    ap.add_argument("--data-dir", default=None, help="genft data folder (default: $GENFT_DATA_DIR, else ./data)")
    ap.add_argument("--study-data", default=str(REPO.parent / "shared" / "paper-data"),
                    help="the study's release, imported when the data set is not in the data folder")
    ap.add_argument("--train-size", type=int, default=None, help="train_<N>.jsonl (default: smallest >= --train-limit)")
    ap.add_argument("--train-limit", type=int, default=64, help="first N training items (default 64)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch of --train-limit)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=True, help="LoRA r16 all-linear (default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: 2e-4 LoRA, 2e-5 full)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    ap.add_argument("--reps", type=int, default=3, help="runs per arm (median reported; >= 3 for a real figure)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="bfloat16: every arm in bf16 mixed precision (needs a CPU with native bf16); the shares use "
                    "the bf16 matmul peak")
    ap.add_argument("--tol", type=float, default=None, help="largest first-step loss difference between arms "
                    "(default 1e-3; with --dtype bfloat16 2e-2: bf16 rounds each product to 2**-8)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="torch.profiler runs of a genft arm and the plain loop's arm it is compared with "
                         "(genft/trainer, genft/trainer-padfree, genft-padded/trainer): auto = where genft's is slower")
    ap.add_argument("--quick", action="store_true", help="16 items, 2 steps, max_length 256: a smoke run")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"),
                    help="Markdown report: its finetune_speed section is written ('' = none)")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.dtype == "bfloat16":
        from genft.precision import PrecisionError, check_cpu_bf16

        try:
            check_cpu_bf16("--dtype bfloat16")
        except PrecisionError as e:
            ap.error(str(e))
    if args.tol is None:
        args.tol = 2e-2 if args.dtype == "bfloat16" else 1e-3

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS) or len(set(arms)) != len(arms):
        ap.error(f"--arms: choose from {', '.join(ARMS)}")
    if args.quick:
        args.train_limit = min(args.train_limit, 16)
        args.max_length = min(args.max_length, 256)
        args.steps = args.steps or 2
    steps = args.steps or -(-args.train_limit // args.batch_size)
    for name, value in (("threads", args.threads), ("reps", args.reps), ("steps", steps), ("batch-size", args.batch_size),
                        ("train-limit", args.train_limit), ("max-length", args.max_length)):
        if value < 1:
            ap.error(f"--{name}: must be >= 1")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    opts = {"model": args.model, "threads": args.threads, "task": args.task, "dataset": args.dataset,
            "data_dir": args.data_dir, "study_data": args.study_data, "train_limit": args.train_limit,
            "train_size": args.train_size, "steps": steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "lora": args.lora, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "learning_rate": args.lr if args.lr is not None else (2e-4 if args.lora else 2e-5), "seed": args.seed,
            "reps": args.reps, "arms": arms, "tol": args.tol, "profile": args.profile, "dtype": args.dtype}
    res = benchmark(opts, log=lambda m: print(m, flush=True))
    command = "python benchmarks/finetune_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(res, command.strip())
    if args.out:
        write_section(args.out, SECTION + (":bfloat16" if args.dtype == "bfloat16" else ""), text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print(text)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
