"""Data sets: the registry, the one canonical on-disk layout, validation on every load, the evaluation protocol,
and the sources that write the layout (the study's release, the public hub data sets, genft.builtin).

    registry   DatasetInfo, the study's 18 and genft's builtin data sets, the command that creates each
    layout     DATA_DIR/<task>/<dataset>/{test,demos,train_<N>}.jsonl + meta.json: paths, validation, atomic writes
    protocol   the study's evaluation protocol (faithful mode): first 250 test items, defective items kept, quirks
    study      `genft data import-study`: the study's release from a folder, an archive, a URL or the pinned commit
    hub        `genft data build-hub`: the same sets built from the public hub data sets they were sampled from

Dependencies point one way: prompts/files -> data -> everything else.
"""
from __future__ import annotations

from .layout import (
    CLEAN,
    PROTOCOLS,
    STUDY,
    UNLABELED,
    check_protocol,
    data_dir,
    data_protocols,
    dataset_dir,
    file_sha256,
    is_defective,
    load_split,
    read_jsonl,
    read_meta,
    read_protocol,
    train_sizes,
    validate_item,
    write_dataset,
)
from .protocol import STUDY_QUIRKS, STUDY_SCORED_ITEMS, StudyQuirks, quirks_for, study_prompt_text
from .registry import (
    BUILTIN_DATASETS,
    BUILTIN_DEMO_POOL,
    BUILTIN_TEST_SIZE,
    BUILTIN_TRAIN_SIZES,
    STUDY_DATASETS,
    STUDY_TRAIN_SIZES,
    DataError,
    DatasetInfo,
    all_datasets,
    data_command,
    datasets_for,
    get_dataset,
    study_demo_pool,
    study_train_sizes,
    train_dataset,
)
from .study import STUDY_ARCHIVE_URL, STUDY_COMMIT, STUDY_REPOSITORY, import_study, release_sums, verify_release

__all__ = [
    "BUILTIN_DATASETS", "BUILTIN_DEMO_POOL", "BUILTIN_TEST_SIZE", "BUILTIN_TRAIN_SIZES", "CLEAN", "DataError",
    "DatasetInfo", "PROTOCOLS", "STUDY", "STUDY_ARCHIVE_URL", "STUDY_COMMIT", "STUDY_DATASETS",
    "STUDY_QUIRKS", "STUDY_REPOSITORY", "STUDY_SCORED_ITEMS", "STUDY_TRAIN_SIZES", "StudyQuirks", "UNLABELED",
    "all_datasets", "check_protocol", "data_command", "data_dir", "data_protocols", "dataset_dir", "datasets_for",
    "file_sha256", "get_dataset", "import_study", "is_defective", "load_split", "quirks_for", "read_jsonl",
    "read_meta", "read_protocol", "release_sums", "study_demo_pool", "study_prompt_text", "study_train_sizes",
    "train_dataset", "train_sizes", "validate_item", "verify_release", "write_dataset",
]
