"""Shared fixtures.  Tests are fast by default: one torch thread (2-core machines), a tiny random model."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY_DATA = Path(os.environ.get("GENFT_STUDY_DATA", REPO.parent / "shared" / "paper-data"))


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from genft.models import prepare

    return str(prepare("tiny"))


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory) -> Path:
    """genft's builtin data sets (genft.builtin), generated once per session; tests only read it."""
    from genft.builtin import generate

    root = tmp_path_factory.mktemp("builtin-data")
    generate(root, log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def study_release(tmp_path_factory):
    """A small release in the study's format made by the tests (tests/study_release.py): its data/ folder, a
    sums file for it and GitHub-style archives."""
    from study_release import make_release

    return make_release(tmp_path_factory.mktemp("study-release"))


@pytest.fixture
def release_checked(study_release, monkeypatch):
    """genft's import checks the made release against its own sums file (instead of the real release's)."""
    from genft.data import study

    monkeypatch.setattr(study, "_SUMS_FILE", study_release.sums)
    study.release_sums.cache_clear()
    yield study_release
    study.release_sums.cache_clear()


@pytest.fixture(scope="session")
def study_format_data(study_release, tmp_path_factory) -> Path:
    """The made release imported into the canonical layout (clean protocol): the study's 18 data sets in the
    study's format, on any clone."""
    from genft.data import import_study

    root = tmp_path_factory.mktemp("study-format-data")
    import_study(study_release.data, root, log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def study_data(tmp_path_factory) -> Path:
    """The study's real release imported into the canonical layout, for the tests of its own content (skipped
    where it is absent: set GENFT_STUDY_DATA to its data/ folder)."""
    if not STUDY_DATA.is_dir():
        pytest.skip(f"the study's data is not at {STUDY_DATA} (set GENFT_STUDY_DATA)")
    from genft.data import import_study

    root = tmp_path_factory.mktemp("study-data")
    import_study(STUDY_DATA, root, log=lambda *_: None)
    return root


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory, tiny_model, builtin_data) -> Path:
    """A real suite run, once per session, as a user runs one: genft's builtin data, the tiny model, a LoRA
    fine-tune with two seeds (finetune/sft.py, 2 steps each), evaluated in-domain, out-of-domain and cross-task at
    0 and 1 shots.  Returns the suite file; its output folder holds the cells and manifests the run wrote."""
    import yaml

    from genft.suite.run import run_suite

    root = tmp_path_factory.mktemp("tiny-suite")
    doc = {"name": "tiny-suite", "threads": 1, "data": {"source": "builtin", "data_dir": str(builtin_data)},
           "models": {"tiny": {"model": "tiny"}},
           "finetune": [{"name": "ft-products", "base": "tiny", "task": "sentiment", "dataset": "builtin_products",
                         "train_size": 100, "train_limit": 16, "seeds": [1, 2],
                         "trainer": {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "learning_rate": 5.0e-2,
                                     "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 128}}],
           "eval": {"test_sets": ["builtin_products", "builtin_restaurants", "builtin_sports"],
                    "shots": {"classification": [0, 1], "generation": [0]},
                    "prompts": {"same_task": [1], "cross_task": [1, 2], "base": [1]},
                    "limit": {"classification": 8, "generation": 2},
                    "backend": "genft-hf", "batch_size": 4, "group": "cell"},
           "output": str(root / "out")}
    path = root / "tiny-suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    lines: list[str] = []
    assert run_suite(path, log=lines.append) == 0, "\n".join(lines[-40:])
    return path


# ---------------------------------------------------------------- genft-hf's tests (tests/test_backend_*.py)


@pytest.fixture(scope="module")
def lively(tiny_model, tmp_path_factory) -> str:
    """The tiny Llama, livened (see backend_setup._livened)."""
    from backend_setup import _livened

    return _livened(tiny_model, tmp_path_factory.mktemp("lively"))


@pytest.fixture(scope="module")
def lively_swa(tmp_path_factory) -> str:
    """genft's tiny sliding-window model (Gemma-2-style: 16-token windows, full layers, softcaps), livened."""
    from backend_setup import _livened
    from genft.models import prepare

    return _livened(str(prepare("tiny-swa")), tmp_path_factory.mktemp("lively-swa"))


@pytest.fixture(scope="module")
def models(lively):
    """lm-eval's `hf` and genft-hf on the lively model (backend_setup._pair)."""
    from backend_setup import _pair

    return _pair(lively)


# ---------------------------------------------------------------- fine-tuning's tests (tests/test_finetune_*.py)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The fine-tuning tests' data set (finetune_setup.TRAIN, DEMOS) as sentiment/amazon.  (test_benchmarks.py
    and test_workflow.py define their own data_root.)"""
    from finetune_setup import DEMOS, TRAIN
    from genft import data as gdata

    root = tmp_path_factory.mktemp("ft-data")
    # The test split is the first 4 training items: lm-eval then builds contexts for exactly the items the
    # training prompts are built for, with demos from the same pool (the data set's demos split).
    gdata.write_dataset("sentiment", "amazon", {"train_16": TRAIN, "demos": DEMOS, "test": TRAIN[:4]}, root)
    return root


@pytest.fixture(scope="module")
def tok(tiny_model):
    """The tiny model's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)
