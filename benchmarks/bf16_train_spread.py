#!/usr/bin/env python
"""bf16's own spread in training: how far a batch's loss moves from float32's, whichever attention runs.

    python benchmarks/bf16_train_spread.py --data-dir data

The examples of benchmarks/finetune_speed.py's recipe (genft's own, the first --train-limit items, tokenized
as TRL does, loss on the completion), in batches of --batch-size in order.  Each batch's loss on the base
model (what a LoRA run's first step computes: LoRA's B matrices start at zero) is computed by float32 with
sdpa over padded rows (the reference) and, in two bf16 precisions -- bf16 autocast over float32 weights
(`bf16: true`) and the weights in bf16 under autocast (LoRA's bf16 base, `dtype: bfloat16`) -- by three
attentions: sdpa over padded rows, sdpa over the flattened row with its block-diagonal mask (transformers'
padding-free path), and genft's per-example attention (genft.training.attention).  float32 with genft's
attention is shown too (it should agree to float rounding).

Reported per evaluator: |loss - reference| over the batches (largest and mean).  Two correct bf16 arms of
benchmarks/finetune_speed.py can differ by the sum of their distances from float32, which is what its bf16
first-step tolerance is set from.  Exit status 1 where genft's attention moves a loss further from float32
than the farthest sdpa path of the same precision (and more than 2**-8), or float32 per-example attention
disagrees with float32 sdpa by more than 1e-4.  The section `bf16_train_spread` of reports/benchmarks.md is written.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_arms import plain_rows  # noqa: E402
from finetune_bench import build_shared_examples, prepare_data  # noqa: E402
from report_section import write_section  # noqa: E402
from run_conditions import check_dtype, machine_text, now_text, offline_environment  # noqa: E402

# (precision, attention, batches): float32 padded sdpa is the reference
REFERENCE = ("float32", "sdpa", "padded")
EVALUATORS = (("float32", "genft_examples", "flattened"),
              *((p, a, b) for p in ("bf16 autocast", "bf16 base")
                for a, b in (("sdpa", "padded"), ("sdpa", "flattened"), ("genft_examples", "flattened"))))
FP32_AGREE = 1e-4
FLOOR = 2.0 ** -8  # bf16's relative resolution: below it, which path is nearer float32 is rounding's choice


def batch_losses(model_path: str, rows: list[dict], batch_size: int, precision: str, attention: str,
                 batches: str, pad_id: int) -> list[float]:
    """The loss of each batch of `rows`, the model loaded once in `precision` with `attention`."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from genft.training.attention import use_example_attention

    dtype = torch.bfloat16 if precision == "bf16 base" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").eval()
    if attention == "genft_examples":
        use_example_attention(model)
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=batches == "flattened")
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
        for i in range(0, len(rows), batch_size):
            out.append(float(model(**collate(rows[i:i + batch_size]), use_cache=False).loss))
    return out


def measure(model_path: str, rows: list[dict], batch_size: int, pad_id: int, log=print) -> dict:
    res = {}
    for ev in (REFERENCE, *EVALUATORS):
        res[ev] = batch_losses(model_path, rows, batch_size, *ev, pad_id)
        log(f"{' / '.join(ev)}: " + " ".join(f"{x:.4f}" for x in res[ev]))
    return res


def judge(res: dict) -> tuple[dict, bool]:
    """Per evaluator (max, mean) |d| from the reference, and whether genft's attention stays within sdpa's
    spread in each bf16 precision and agrees in float32."""
    ref = res[REFERENCE]
    dist = {}
    for ev in EVALUATORS:
        d = [abs(a - b) for a, b in zip(res[ev], ref)]
        dist[ev] = (max(d), sum(d) / len(d))
    ok = dist[EVALUATORS[0]][0] <= FP32_AGREE
    for precision in ("bf16 autocast", "bf16 base"):
        sdpa = max(dist[(precision, "sdpa", b)][0] for b in ("padded", "flattened"))
        ok &= dist[(precision, "genft_examples", "flattened")][0] <= max(sdpa, FLOOR)
    return dist, ok


def render(res: dict, dist: dict, ok: bool, info: dict, argv: list, wall_s: float) -> str:
    from genft.report.markdown import table

    rows = [[p, a, b, f"{dist[(p, a, b)][0]:.4f}", f"{dist[(p, a, b)][1]:.4f}",
             " ".join(f"{x:.4f}" for x in res[(p, a, b)])] for p, a, b in EVALUATORS]
    autocast = max(dist[(p, a, b)][0] for p, a, b in EVALUATORS if p == "bf16 autocast")
    lines = [
        "## bf16's own spread in training: a batch's loss against float32's, per attention", "",
        f"Generated by `python benchmarks/bf16_train_spread.py {' '.join(argv)}`.".replace(" `.", "`."),
        f"Model {info['model']}; {info['data']}; {len(res[REFERENCE])} batches of {info['batch_size']}; "
        f"{now_text()}; {machine_text()}; {wall_s / 60:.1f} min.  The base model's loss on each batch (what a",
        "LoRA run's first step computes); d: its difference from float32 with sdpa over padded rows, whose losses",
        "are " + " ".join(f"{x:.4f}" for x in res[REFERENCE]) + ".", "",
        table(rows, ["precision", "attention", "batches", "max |d|", "mean |d|", "losses"]), "",
        f"genft's per-example attention within sdpa's own bf16 spread (at least 2**-8) in both precisions, and "
        f"equal to float32 sdpa within {FP32_AGREE:g} in float32: **{'yes' if ok else 'no'}**.  In bf16 autocast "
        f"the farthest loss is {autocast:.4f} from float32's, so two correct bf16 arms of finetune_speed.py can be "
        f"up to {2 * autocast:.4f} apart (its --dtype bfloat16 first-step tolerance).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a genft model name or a model folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--dataset", default=None, help="training data set (default: the task's)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--study-data", default=str(REPO.parent / "shared" / "paper-data"))
    ap.add_argument("--train-limit", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks.md"), help="the report ('' = none)")
    args = ap.parse_args(argv)
    check_dtype(ap, "bfloat16")
    offline_environment()
    import torch
    from transformers import AutoTokenizer

    from genft import models, training

    torch.set_num_threads(args.threads)
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="genft-bf16-spread-"))
    try:
        data = prepare_data(args.task, args.dataset, args.data_dir, args.study_data, args.train_limit, None, scratch)
        model_path = str(models.resolve(args.model))
        cfg = training.FinetuneConfig(
            task=args.task, dataset=data["dataset"], train_size=data["train_size"], train_limit=args.train_limit,
            data_dir=data["root"], model_name_or_path=model_path, output_dir=str(scratch / "unused"),
            max_length=args.max_length)
        examples, _ = build_shared_examples(cfg, log=lambda *_: None)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        res = measure(model_path, plain_rows(tokenizer, examples), args.batch_size, pad_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    dist, ok = judge(res)
    info = {"model": args.model, "batch_size": args.batch_size,
            "data": f"{args.task}/{data['dataset']} train_{data['train_size']}, first {len(examples)} examples"}
    text = render(res, dist, ok, info, sys.argv[1:] if argv is None else argv, time.time() - started)
    if args.out:
        write_section(args.out, "bf16_train_spread", text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
