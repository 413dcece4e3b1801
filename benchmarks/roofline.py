"""The roofline both speed benchmarks measure against: what this machine can do, and what a model weighs.

The machine: its matmul FLOP/s in the weights' dtype and its memory read bandwidth, measured at a thread count
(`machine_peaks`), and a decoding step's matmuls timed alone (`decode_matmuls`).  The model: its parameter
counts and the bytes a decoding step reads (`model_sizes`).  benchmarks/eval_speed.py and
benchmarks/finetune_speed.py state their speeds as shares of these peaks.
"""
from __future__ import annotations

import time


def machine_peaks(threads: int, rounds: int = 3, gap_s: float = 1.0, dtype: str = "float32") -> dict:
    """Matmul FLOP/s in `dtype` (2048^3: float32 sgemm, or bfloat16 as torch runs a bf16 model's linear layers)
    and memory read bandwidth (256 MiB fp32 sum) at `threads`: the best of 5 calls in each of `rounds` rounds
    `gap_s` apart (one round can fall in a slow spell: a reading of 218 GFLOP/s where the same machine gave 371
    minutes later)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048, dtype=getattr(torch, dtype)), torch.randn(2048, 2048, dtype=getattr(torch, dtype))
    x = torch.randn(64 * 1024 * 1024)
    mm, rd = [], []
    for i in range(rounds):
        if i:
            time.sleep(gap_s)
        mm.append(best_seconds(lambda: a @ b))
        rd.append(best_seconds(x.sum))
    return {"flops": 2 * 2048**3 / min(mm), "bandwidth": x.numel() * 4 / min(rd), "dtype": dtype}


def peak_label(peaks: dict) -> str:
    """The dtype `machine_peaks` measured the matmul in, as the reports name it: "fp32" or "bf16"."""
    return "bf16" if peaks.get("dtype") == "bfloat16" else "fp32"


def best_seconds(f, reps: int = 5) -> float:
    """The fastest of `reps` timed calls of f, after one untimed call."""
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def decode_matmuls(model, threads: int, rows: int = 20) -> dict:
    """A decoding step's matmuls at `rows` live rows, alone: every linear layer of the model (LoRA adapters
    included, the lm_head last) applied once to `rows` random rows, in the model's order, so each weight comes
    from memory as in a real step (best of 3).  Returns seconds per step and the FLOP/s reached."""
    import torch

    torch.set_num_threads(threads)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.device.type != "meta"]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    flops = sum(2 * rows * w.numel() for w in weights)

    def step():
        with torch.no_grad():
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)

    seconds = best_seconds(step, reps=3)
    return {"rows": rows, "seconds": seconds, "flops": flops / seconds}


def model_sizes(model) -> dict:
    """Parameter counts of a (possibly peft-wrapped) causal LM, each tied tensor once: `body` the non-embedding
    parameters without LoRA (prefill FLOPs per token / 2), `head` the lm_head (FLOPs per scored position / 2;
    tied or not), `embed`, `lora`, `trainable`, `total`, and `bytes` a decoding step reads: every weight it
    multiplies, the lm_head's included; an untied input embedding is not read (a lookup), a tied one is the
    lm_head."""
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    tied = head is embed or (head.device.type != "meta" and head.data_ptr() == embed.data_ptr())
    total = lora = trainable = nbytes = 0
    for name, p in model.named_parameters():  # remove_duplicate: a tied tensor once
        total += p.numel()
        nbytes += p.numel() * p.element_size()
        lora += p.numel() if "lora_" in name else 0
        trainable += p.numel() if p.requires_grad else 0
    untied = 0 if tied else head.numel()
    return {"total": total, "body": total - lora - embed.numel() - untied, "embed": embed.numel(),
            "head": head.numel(), "tied": tied, "lora": lora, "trainable": trainable,
            "bytes": nbytes - embed.numel() * embed.element_size() + (head.numel() - untied) * head.element_size()}
