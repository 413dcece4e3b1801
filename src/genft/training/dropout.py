"""LoRA's dropout with cheaper random masks.

peft puts an `nn.Dropout` in front of every LoRA adapter (`lora_dropout`, on the adapter's input: tokens x
in_features values per module, for every adapted linear layer of every block).  On a CPU torch draws that mask
with one generator call per value (`bernoulli_`), which costs more than the adapter's own matmuls: with
SmolLM2-135M, LoRA on all linear layers and dropout 0.05, about a fifth of a training step.

`MaskDropout` keeps the same operation (each value kept with probability 1 - p and scaled by 1 / (1 - p), in
training mode only) and draws the mask from 16-bit uniform integers, four per 64-bit draw of torch's own
generator: a value is dropped when its integer falls below round(p x 65536), so p is exact to 2**-16 (0.05
becomes 3277 / 65536 = 0.050003).  The masks come from torch's default generator, so the seed fixes them and
a resumed run continues the stream the Trainer saved.  They are not the masks `nn.Dropout` would draw: the
recipe hash names these (config.LORA_DROPOUT_MASKS), so no run trained with the others is taken for one of these.
"""
from __future__ import annotations

import torch

from .config import LORA_DROPOUT_MASKS
_LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool [shape]: True (keep) with probability 1 - round(p x 65536) / 65536, from torch's default generator."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), (1 << 63) - 1)
    draws = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return draws >= -(_LEVELS // 2) + round(p * _LEVELS)


class MaskDropout(torch.nn.Module):
    """Dropout with `keep_mask`'s masks (the module's docstring)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p}: expected 0 <= p < 1")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = keep_mask(x.shape, self.p, x.device).to(x.dtype)
        # x * 1 or x * 0, then the scale in one rounding: the values of where(keep, x * scale, 0), at a fraction
        # of its cost on a CPU (where() over a bool mask is ~10x slower there than a multiply in x's dtype)
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, masks={LORA_DROPOUT_MASKS!r}"


def use_mask_dropout(model: torch.nn.Module) -> int:
    """Replace every LoRA adapter's `nn.Dropout` (peft's `lora_dropout[adapter]`) in `model` with a MaskDropout
    of the same p; returns how many were replaced (identities, where p is 0, are left alone)."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in drops.items():
            if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                drops[name] = MaskDropout(drop.p)
                replaced += 1
    return replaced
