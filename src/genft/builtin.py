"""genft's own small data set: all five tasks, two domains each, generated deterministically from templates
and word lists kept in this file, so that everything runs on a fresh machine with no download.

Each task has a training domain (in-domain test + train splits) and a second domain with other vocabulary
and phrasing (out-of-domain test), so that fine-tuning shows a real domain shift.
"""
from __future__ import annotations

from .data import BUILTIN_DATASETS, DatasetInfo

TRAIN_SIZES = (100, 200, 400)
TEST_SIZE = 100
DEMO_POOL = 8


def _builtin(task, name, domain, trains, description):
    return DatasetInfo(task, name, domain, "builtin", "", trains, description)


for _info in [
    _builtin("summary", "builtin_sports", "in", True, "match reports -> one-sentence result"),
    _builtin("summary", "builtin_weather", "out", False, "weather bulletins -> one-sentence forecast"),
    _builtin("question", "builtin_social", "in", True, "everyday social situations -> why/what question"),
    _builtin("question", "builtin_science", "out", False, "science facts -> what/which question"),
    _builtin("sentiment", "builtin_products", "in", True, "product reviews"),
    _builtin("sentiment", "builtin_restaurants", "out", False, "restaurant reviews"),
    _builtin("paraphrase", "builtin_people", "in", True, "sentences about people: reworded vs swapped roles"),
    _builtin("paraphrase", "builtin_questions", "out", False, "question pairs: same vs different intent"),
    _builtin("nli", "builtin_work", "in", True, "people and jobs"),
    _builtin("nli", "builtin_nature", "out", False, "animals and places"),
]:
    BUILTIN_DATASETS[_info.name] = _info
