"""The GPU path, checked on a CUDA machine: bf16 LoRA fine-tuning of SmolLM2 with finetune/sft.py, genft-hf vs
lm-eval's hf on a few cells in bf16 and fp32 (identical per-item scores and generations, or the difference
stated), and the vllm backend when it is installed.  Writes reports/device-check.md.  Run it through
scripts/device-check.sh; it refuses to run without CUDA (nothing it would write could be trusted)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from genft import harness
from genft.data import data_dir
from genft.files import atomic_write, now_utc
from genft.models import prepare
from genft.prompts import primary_metric_of

REPO = Path(__file__).resolve().parents[1]
CELLS = [("genft_sentiment_builtin_products", 0), ("genft_sentiment_builtin_products", 2),
         ("genft_nli_builtin_work", 3), ("genft_summary_builtin_sports", 1)]
LIMIT = 24


def evaluate(model: str, backend: str, dtype: str) -> dict:
    lm = harness.load_model(model, backend, device="cuda", batch_size=8, dtype=dtype)
    tm = harness.task_manager(model)
    out = {}
    for task, shots in CELLS:
        t0 = time.time()
        r = harness.evaluate(lm, [task], num_fewshot=shots, limit=LIMIT, pretrained=model, log_samples=True, tm=tm)
        samples = sorted(r["samples"][task], key=lambda s: s["doc_id"])
        metric = primary_metric_of(task)
        out[f"{task} {shots}-shot"] = {"score": r["results"][task][f"{metric},none"], "metric": metric,
                                      "items": [s[metric] for s in samples],
                                      "outputs": [s.get("filtered_resps") for s in samples],
                                      "wall_s": round(time.time() - t0, 2)}
    del lm
    torch.cuda.empty_cache()
    return out


def compare(a: dict, b: dict) -> list[list]:
    rows = []
    for cell in a:
        same_items = a[cell]["items"] == b[cell]["items"]
        same_out = a[cell]["outputs"] == b[cell]["outputs"]
        diff = max(abs(x - y) for x, y in zip(a[cell]["items"], b[cell]["items"]))
        rows.append([cell, f"{a[cell]['score']:.4f}", f"{b[cell]['score']:.4f}",
                     "identical" if same_items and same_out else f"DIFFER (max per-item {diff:.4f}; outputs "
                     f"{'equal' if same_out else 'differ'})"])
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("scripts/device_check.py: no CUDA device: this check only means something on a GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    model = str(prepare("smollm2-135m"))
    lines = [f"# Device check: {gpu}", "", f"Written by `scripts/device-check.sh` on {now_utc()}; torch "
             f"{torch.__version__}, CUDA {torch.version.cuda}.", ""]
    # 1. bf16 LoRA fine-tuning
    out = REPO / "runs" / "device-check" / "lora-bf16"
    cmd = [sys.executable, str(REPO / "finetune" / "sft.py"), "--config",
           str(REPO / "finetune" / "recipes" / "cpu-lora-sentiment-256.yaml"), "--dataset", "builtin_products",
           "--train_size", "100", "--train_limit", "64", "--bf16", "true", "--output_dir", str(out),
           "--data_dir", str(data_dir(None))]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ok = proc.returncode == 0 and (out / "genft_manifest.json").is_file()
    man = json.loads((out / "genft_manifest.json").read_text()) if ok else {}
    lines += ["## bf16 LoRA fine-tuning (finetune/sft.py)", "",
              f"- exit {proc.returncode} in {time.time() - t0:.0f} s; " + (
                  f"bf16 {man['device']['bf16']}, {man['training']['tokens_per_s']} tokens/s, final loss "
                  f"{man['training']['final_loss']:.4f}, weight deviation {man['weight_deviation']['mean_abs_diff']:.3e}"
                  if ok else "FAILED: " + " / ".join(proc.stderr.strip().splitlines()[-3:])), ""]
    # 2. genft-hf vs hf, bf16 and fp32
    results = {}
    for dtype in ("float32", "bfloat16"):
        for backend in ("hf", "genft-hf"):
            results[(backend, dtype)] = evaluate(model, backend, dtype)
        lines += [f"## genft-hf vs hf, {dtype} (first {LIMIT} items)", "", "| cell | hf | genft-hf | per item |",
                  "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in compare(results[("hf", dtype)], results[("genft-hf", dtype)])]
        lines += [""]
    # 3. vllm, when installed
    try:
        import vllm  # noqa: F401

        results[("vllm", "bfloat16")] = evaluate(model, "vllm", "bfloat16")
        lines += ["## vllm vs hf, bfloat16", "", "| cell | hf | vllm | per item |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in compare(results[("hf", "bfloat16")],
                                                               results[("vllm", "bfloat16")])]
    except ImportError:
        lines += ["## vllm", "", "Not installed on this machine: unverified.", ""]
    atomic_write(REPO / "reports" / "device-check.md", ("\n".join(lines).rstrip() + "\n").encode())
    print(REPO / "reports" / "device-check.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
