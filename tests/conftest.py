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
def study_data(tmp_path_factory) -> Path:
    """The study's release imported into the canonical layout (skipped where ../shared is absent)."""
    if not STUDY_DATA.is_dir():
        pytest.skip(f"the study's data is not at {STUDY_DATA} (set GENFT_STUDY_DATA)")
    from genft.data import import_study

    root = tmp_path_factory.mktemp("study-data")
    import_study(STUDY_DATA, root, log=lambda *_: None)
    return root
