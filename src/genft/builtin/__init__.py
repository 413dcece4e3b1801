"""genft's own small data set: all five tasks, two domains each, generated deterministically from templates
and word lists kept in this package, so that everything runs on a fresh machine with no download.

Each task has a training domain (in-domain test + train splits) and a second domain with other vocabulary
and phrasing (out-of-domain test), so that fine-tuning shows a real domain shift.

`summary`, `question`, `sentiment`, `paraphrase` and `nli` make one task's items (both domains), from their
own word lists and `words` (the lists and helpers they share); `splits` deals the items into splits and
writes them with their meta.
"""
from __future__ import annotations

from .splits import (BUILTIN_DATASETS, DEMO_POOL, GENERATOR_VERSION, GENERATORS, SEEDS, TEST_SIZE, TRAIN_SIZES,
                     build_splits, generate)

__all__ = ["BUILTIN_DATASETS", "DEMO_POOL", "GENERATOR_VERSION", "GENERATORS", "SEEDS", "TEST_SIZE", "TRAIN_SIZES",
           "build_splits", "generate"]
