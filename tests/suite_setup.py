"""The suite tests' setup (tests/test_suite_*.py, test_suite_boundaries.py, test_hostile.py): a small suite file
on genft's builtin data and the tiny model, edits to it, its plan, a run of it, a fake trainer that writes
real weights and the manifest sft.py writes, a trainer that must not be called, and a count of the models
loaded and the cells evaluated."""
from __future__ import annotations

from pathlib import Path

import yaml

from genft import harness, suite as gsuite
from genft.models import weights_fingerprint
from genft.suite.execute import Trainer
from genft.suite.run import run_suite
from genft.training import write_manifest
from manifests import fake_manifest


class FakeTrainer(Trainer):
    """A 'fine-tune' in no time: the tiny model's weights moved by a seeded perturbation (`noise` per call:
    the same noise gives the same weights, as a deterministic trainer does), saved like sft.py saves them,
    and the manifest sft.py writes (recipe hashes, the weights' fingerprint, last)."""

    def __init__(self, noise: int = 0):
        self.calls: list[str] = []
        self.noise = noise

    def train(self, job, log):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from genft.models import prepare

        self.calls.append(job.run)
        src = prepare("tiny")
        model = AutoModelForCausalLM.from_pretrained(src)
        gen = torch.Generator().manual_seed(1000 + self.noise)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
        model.save_pretrained(job.out_dir)
        AutoTokenizer.from_pretrained(src).save_pretrained(job.out_dir)
        write_manifest(job.out_dir, fake_manifest(
            job.out_dir, config=job.config, config_hash=job.recipe_hash, replicate_hash=job.replicate_hash,
            weights_sha256=weights_fingerprint(job.out_dir), wall_time_s=0.1, tokens_per_s=1000.0,
            mean_abs_diff=float(job.config["learning_rate"])))


class NoTrainer(Trainer):
    def train(self, job, log):
        raise AssertionError(f"the trainer was called for {job.run}")


def make_suite(tmp: Path, builtin_data: Path, out: Path | None = None, finetune=True, **eval_overrides) -> Path:
    doc = {
        "name": "t",
        "data": {"source": "builtin", "data_dir": str(builtin_data)},
        "models": {"tiny": {"model": "tiny"}},
        "finetune": [{"name": "ft-products", "base": "tiny", "task": "sentiment", "train_size": 100,
                      "train_limit": 16, "trainer": {"use_peft": True, "learning_rate": 2.0e-4, "max_steps": 1,
                                                     "max_length": 128}}] if finetune else [],
        "eval": {"test_sets": ["builtin_products", "builtin_sports"],
                 "shots": {"classification": [0, 1], "generation": [0]},
                 "prompts": {"same_task": [1], "cross_task": [1, 2], "base": [1]},
                 "limit": {"classification": 4, "generation": 2},
                 "backend": "hf", "batch_size": 4, "group": "cell", **eval_overrides},
        "output": str(out or tmp / "out"),
    }
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def edit(path: Path, fn) -> None:
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class Counter:
    """Counts harness.load_model / harness.evaluate calls (and which tasks were evaluated)."""

    def __init__(self, monkeypatch, forbid=False):
        self.loads = 0
        self.evaluated: list[tuple] = []
        real_load, real_eval = harness.load_model, harness.evaluate

        def load_model(*a, **k):
            if forbid:
                raise AssertionError("a model was loaded")
            self.loads += 1
            return real_load(*a, **k)

        def evaluate(lm, tasks, num_fewshot=0, **k):
            self.evaluated += [(t if isinstance(t, str) else t.config.task, num_fewshot, k.get("limit")) for t in tasks]
            return real_eval(lm, tasks, num_fewshot=num_fewshot, **k)

        monkeypatch.setattr(harness, "load_model", load_model)
        monkeypatch.setattr(harness, "evaluate", evaluate)


def run(path: Path, trainer=None, **kw) -> int:
    return run_suite(path, trainer=trainer or NoTrainer(), log=lambda *_: None, **kw)


def plan(path: Path, **kw) -> gsuite.Plan:
    return gsuite.read_plan(gsuite.load_suite(path), **kw)
