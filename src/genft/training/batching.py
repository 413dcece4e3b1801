"""How training rows are put into batches: padded to the longest row, or padding-free.

Padding-free (TRL's `padding_free=True`): the examples of a batch are concatenated into one row with position
ids restarting at every example and no attention mask; each example still sees only itself (genft's attention
runs each example's own causal attention, training.attention; transformers' sdpa would build a block-diagonal
causal mask from the position ids).  No padding is computed, which on a CPU roughly
halves the time of a step and its memory (reports/benchmarks.md, finetune_speed).  The loss is the same mean
over the same target tokens.

A model whose attention ignores that mask (custom attention code) would let an example attend to the one
before it and train on a different objective without any error.  So before training, `check_padding_free`
runs a batch of the training examples both ways through the model and uses padding-free batches only where
the two losses agree; otherwise the trainer pads, and the manifest says why.
"""
from __future__ import annotations

# Two losses of one batch agree when they differ by at most this much (relative): fp32 sums of a few
# thousand terms in another order differ by ~1e-6; an example attending to its neighbour moves the loss by
# far more than 1e-2 of it.  Half-precision weights round each product to ~1e-3.
TOLERANCE = {"float32": 1e-4, "float64": 1e-8}
HALF_TOLERANCE = 2e-2


def check_padding_free(model, tokenizer, rows: list[dict], dtype: str) -> dict:
    """Run `rows` (prompt/completion strings: the first batch-size training examples) through `model` padded
    and flattened.

    Returns {"padding_free": bool, "padded_loss", "flat_loss", "rows", "reason"}: padding_free is True only when
    the two losses agree within the dtype's tolerance.  Needs at least two rows of different lengths to mean
    anything; with fewer, padding gains nothing either and the trainer pads.
    """
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    eos = tokenizer.eos_token or ""
    ids = [tokenizer(r["prompt"] + r["completion"] + eos, add_special_tokens=False)["input_ids"] for r in rows]
    result = {"padding_free": False, "rows": len(ids), "padded_loss": None, "flat_loss": None}
    if len(ids) < 2 or len({len(x) for x in ids}) < 2:
        return {**result, "reason": "the checked batch has no two rows of different lengths: nothing to save"}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # labels = input ids (every token after the first is a target): the widest test of the mask
    examples = [{"input_ids": x} for x in ids]
    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(examples)
    was_training = model.training
    model.eval()  # no dropout: the two passes must see the same function
    try:
        with torch.no_grad():
            # every key the collator makes, as the trainer passes them (cu_seq_lens_* for flash attention), and no
            # cache, as TRL's compute_loss asks (with a cache, transformers does not look for flattened rows)
            losses = [float(model(**{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()},
                                  use_cache=False).loss)
                      for batch in (padded, flat)]
    finally:
        model.train(was_training)
    tol = TOLERANCE.get(dtype, HALF_TOLERANCE)
    diff = abs(losses[0] - losses[1])
    ok = diff <= tol * max(1.0, abs(losses[0]))
    both = f"{losses[0]:.6f} vs {losses[1]:.6f}"
    reason = (f"a batch of the training examples gives the same loss padded and flattened ({both})" if ok
              else f"a batch of the training examples gives another loss padded than flattened ({both}, more than "
                   f"{tol:g} relative): the model's attention does not keep flattened examples apart, so the "
                   "trainer pads")
    return {**result, "padding_free": ok, "padded_loss": round(losses[0], 6), "flat_loss": round(losses[1], 6),
            "reason": reason}
