"""The fine-tuning tests' setup (tests/test_finetune_*.py; test_hostile*.py use its items): a small sentiment
data set (16 training items, 8 demonstrations; tests/conftest.py writes it as `data_root`), a config of a
few steps on it, finetune/sft.py imported, and a genft task evaluated through lm-eval with its samples."""
from __future__ import annotations

import sys

from conftest import REPO
from genft.training import FinetuneConfig

sys.path.insert(0, str(REPO / "finetune"))
import sft  # noqa: E402,F401

POS = ["Great product, works well.", "I love it, the quality is great.", "Fast delivery and it works.",
       "Very good value, would buy again.", "The sound is clear and the battery lasts.", "Nice and sturdy."]
NEG = ["Broke after two days.", "Terrible quality, do not buy.", "It stopped working, very poor.",
       "The screen cracked and support was slow.", "Waste of money.", "Arrived damaged and late."]


def _items(n: int, tag: str) -> list[dict]:
    out = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        text = (POS if label == "positive" else NEG)[(i // 2) % 6]
        out.append({"text": f"{text} ({tag} {i})", "label": label})
    return out


TRAIN = _items(16, "train")
DEMOS = _items(8, "demo")


def _cfg(tiny_model, data_root, out, **kw) -> FinetuneConfig:
    base = dict(task="sentiment", dataset="amazon", train_size=16, data_dir=str(data_root), model_name_or_path=tiny_model,
                output_dir=str(out), max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                learning_rate=1e-3, max_length=256, logging_steps=1, save_steps=100, torch_threads=1)
    base.update(kw)
    return FinetuneConfig(**base)


def _quiet(*_):
    pass


def _lm_eval_contexts(model_dir, data_root, k, peft=None):
    from genft import harness

    lm = harness.load_model(model_dir, peft=peft, batch_size=4)
    tm = harness.task_manager(model_dir, data_root)
    res = harness.evaluate(lm, ["genft_sentiment_amazon"], num_fewshot=k, limit=4, tm=tm, log_samples=True)
    return res


def without_cpu_bf16(monkeypatch):
    """This process's CPU as one without native bf16 (what torch's capability checks report there)."""
    import platform

    import torch

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
