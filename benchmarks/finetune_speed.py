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
The genft arms draw LoRA's dropout masks genft's way (genft.training.dropout); the plain loop keeps peft's
nn.Dropout.  The precision arms (not run by default) are the genft arm in three precisions, side by side in one
run (--arms genft-fp32,genft-bf16,genft-bf16-base; the shares are then of the bf16 peak, the section is
`finetune_speed:dtypes`, and each arm's loss per step is shown):
  genft-fp32       float32 throughout.
  genft-bf16       bf16 mixed precision (`bf16: true`: autocast, float32 weights and optimizer state).
  genft-bf16-base  the same with LoRA's frozen base weights stored in bf16 (`dtype: bfloat16`); the adapters,
                   their gradients and optimizer state float32.

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
(benchmarks/roofline.py's machine_peaks) in the dtype the matmuls run in: fp32, or with --dtype bfloat16
(every arm in bf16 mixed precision: TrainingArguments/SFTConfig bf16=True, autocast on the CPU) bf16.

Checks (a failure is written into the report and the exit status is 1): every arm processes the same input
and target tokens; the first-step losses of genft and trainer (and of trainer-padfree) agree within --tol
(the first step sees the base model: LoRA's B matrices start at zero); genft's manifest counts the same
tokens as the wrapper.

    python benchmarks/finetune_speed.py                               # the study-cpu recipe, 2 threads, 3 runs
    python benchmarks/finetune_speed.py --quick --threads 1           # a busy machine / a smoke run
    python benchmarks/finetune_speed.py --model tiny --threads 1 --quick --out /tmp/ft.md --json /tmp/ft.json
    python benchmarks/finetune_speed.py --dtype bfloat16              # bf16 mixed precision, shares of the bf16 peak
    python benchmarks/finetune_speed.py --arms genft-fp32,genft-bf16,genft-bf16-base   # float32 vs bf16

The report is the `finetune_speed` section of --out (reports/benchmarks.md), between
`<!-- finetune_speed:start -->` and `<!-- finetune_speed:end -->` (a bf16 run: `finetune_speed:bfloat16`); the
rest of the file is left as it is.
Data: --data-dir or $GENFT_DATA_DIR; if the data set is not there, the study's release (the folder
--study-data names) is imported into a temporary folder, else genft's builtin training set of the task is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # the modules next to this file
    sys.path.insert(0, str(HERE))
from finetune_arms import ARMS, PRECISION_ARMS, worker  # noqa: E402
from finetune_bench import benchmark  # noqa: E402
from finetune_report import render  # noqa: E402
from report_section import write_section  # noqa: E402
from run_conditions import check_dtype, offline_environment  # noqa: E402

SECTION = "finetune_speed"
DEFAULT_ARMS = ("genft", "genft-padded", "trainer", "trainer-padfree")


def parser() -> argparse.ArgumentParser:
    """The command line's options (the module docstring is its help; --worker, hidden, runs one arm's process)."""
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
                    "(default 1e-3; with --dtype bfloat16 7e-2: in bf16 mixed precision a batch's loss on this recipe "
                    "moved up to 0.035 from float32's, whichever attention ran, so two correct bf16 arms can be "
                    "twice that apart: benchmarks/bf16_train_spread.py)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="torch.profiler runs of a genft arm and the plain loop's arm it is compared with "
                         "(genft/trainer, genft/trainer-padfree, genft-padded/trainer): auto = where genft's is slower")
    ap.add_argument("--quick", action="store_true", help="16 items, 2 steps, max_length 256: a smoke run")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"),
                    help="Markdown report: its finetune_speed section is written ('' = none)")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    return ap


def options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The benchmark's opts (finetune_bench.benchmark) from the options, checked: --quick's smaller run, the
    defaults of --steps (one epoch of --train-limit), --lr and --tol, and the recipe's LoRA settings."""
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if set(arms) & set(PRECISION_ARMS):
        args.dtype = "bfloat16"  # the precisions side by side: every arm's share is of the bf16 matmul peak
    check_dtype(ap, args.dtype)
    if args.tol is None:
        args.tol = 7e-2 if args.dtype == "bfloat16" else 1e-3

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
    return {"model": args.model, "threads": args.threads, "task": args.task, "dataset": args.dataset,
            "data_dir": args.data_dir, "study_data": args.study_data, "train_limit": args.train_limit,
            "train_size": args.train_size, "steps": steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "lora": args.lora, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "learning_rate": args.lr if args.lr is not None else (2e-4 if args.lora else 2e-5), "seed": args.seed,
            "reps": args.reps, "arms": arms, "tol": args.tol, "profile": args.profile, "dtype": args.dtype}


def section_name(opts: dict) -> str:
    """The report's section: the precision arms side by side, a bf16 run, or the float32 one."""
    if set(opts["arms"]) & set(PRECISION_ARMS):
        return SECTION + ":dtypes"
    return SECTION + (":bfloat16" if opts["dtype"] == "bfloat16" else "")


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    opts = options(ap, args)
    offline_environment()
    import torch

    torch.set_num_threads(args.threads)
    res = benchmark(opts, log=lambda m: print(m, flush=True))
    command = "python benchmarks/finetune_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(res, command.strip())
    if args.out:
        write_section(args.out, section_name(opts), text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print(text)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
