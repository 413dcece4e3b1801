"""bf16 on the CPU: whether this CPU has it, and the refusal where it does not.

bf16 weights (evaluation) and bf16 autocast (fine-tuning) are fast on a CPU only where its matrix units take
bf16 natively: x86 with AVX512-BF16 or AMX, or ARM with the BF16 extension.  Elsewhere oneDNN emulates bf16
through fp32 (or torch falls back to plain loops), which is slower than fp32 itself and gains nothing in
exchange, so genft refuses bf16 on such a CPU with the reason instead of running the study at a fraction of
its speed.  What the CPU has comes from torch's own capability checks (`torch.cpu`, `torch.ops.mkldnn`),
the ones its kernels dispatch on.
"""
from __future__ import annotations

import platform

BF16_NAMES = ("bfloat16", "bf16")


class PrecisionError(ValueError):
    """bf16 asked for where this machine cannot run it fast: the message says which setting and what to do."""


def cpu_bf16_missing() -> str | None:
    """None when this CPU does bf16 matmuls natively; else what it lacks (torch's own capability checks)."""
    import torch

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return None
        return (f"this x86 CPU (torch's capability: {torch.backends.cpu.get_cpu_capability()}) has neither "
                "AVX512-BF16 nor AMX, so bf16 matmuls are emulated, slower than float32")
    if machine in ("aarch64", "arm64"):
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        return "this ARM CPU has no BF16 extension (torch.ops.mkldnn reports no bf16 support)"
    return f"torch has no bf16 capability check for a {machine or 'unknown'} CPU"


def is_bf16(dtype: object) -> bool:
    return str(dtype).removeprefix("torch.") in BF16_NAMES


def check_cpu_bf16(setting: str) -> None:
    """Raise PrecisionError naming `setting` when bf16 is asked for on a CPU without native bf16."""
    missing = cpu_bf16_missing()
    if missing:
        raise PrecisionError(f"{setting}: bf16 on this CPU is refused: {missing}; use float32 here (drop the "
                             "setting), or run on a CPU with AVX512-BF16 / AMX / ARM BF16, or on a GPU")


def check_eval_dtype(device: str, dtype: object, setting: str = "dtype") -> None:
    """Evaluation in bf16 weights on a CPU needs native bf16 (check_cpu_bf16); other devices and dtypes pass."""
    if is_bf16(dtype) and str(device).split(":")[0] == "cpu":
        check_cpu_bf16(setting)
