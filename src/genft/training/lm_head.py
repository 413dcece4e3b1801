"""The language-model head in training: only at the positions that have a target.

TRL's SFTTrainer computes the loss with a fused LM head (`trl.trainer.utils.add_fused_lm_head`): the backbone's
hidden states go through the LM head in vocabulary tiles, never as whole logits, and the head computes each
position's log-probability, entropy and top-1 flag (for the logged metrics).  On a Triton GPU it projects only
the positions whose label is not -100; on every other device it projects every position (TRL keeps tile shapes
fixed for compiled backends such as Neuron) and zeroes the rest afterwards.

genft trains on the completion only (`completion_only_loss`): the study's targets are a label word or a short
answer after a prompt of hundreds of tokens, so on a CPU nearly all of that head's work (a 49k-256k vocabulary,
forward and its recomputation in backward) is for positions whose result is thrown away.  `scored_positions_only`
makes TRL take its compact path on the CPU too: the same per-position computation, fed only the target
positions, so the loss, its gradients and the metrics are those of the full path (tested), at a fraction of
the head's cost.  The torch code of the tiles does not depend on the device (TRL's own `_use_triton` still
chooses the kernel), and nothing else in TRL reads the switch that is changed.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def scored_positions_only():
    """Within the block, TRL's fused LM head projects only the positions with a target on the CPU as well.

    Yields what the head does: "target positions" or, where this TRL has no such switch (the block then
    changes nothing), TRL's default.
    """
    import trl.trainer.utils as _trl_utils  # as runner.py imports TRL: when training, not when genft is imported

    original = getattr(_trl_utils, "_use_triton", None)
    if original is None:
        yield "TRL's default (this TRL version has no compact switch)"
        return

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    _trl_utils._use_triton = compact
    try:
        yield "target positions"
    finally:
        _trl_utils._use_triton = original
