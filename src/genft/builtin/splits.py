"""The builtin data sets' splits, dealt from the per-task item generators, and writing them with their meta.

Every data set is drawn from its own random.Random(seed) (never the global generator), so that the same call
writes byte-identical files.  Items are drawn per label into pools of unique inputs, then dealt into splits with
exact label quotas: test, demos (every label among the first len(labels) demos), and for training sets train
chunks of 100 + 100 + 200, so train_100 and train_200 are balanced prefixes of train_400.
"""
from __future__ import annotations

import random
from typing import Callable

from .. import data as _data
from ..data import BUILTIN_DATASETS
from ..data import BUILTIN_DEMO_POOL as DEMO_POOL
from ..data import BUILTIN_TEST_SIZE as TEST_SIZE
from ..data import BUILTIN_TRAIN_SIZES as TRAIN_SIZES
from ..prompts import get_task
from . import nli, paraphrase, question, sentiment, summary

GENERATOR_VERSION = 1

SEEDS = {
    "builtin_sports": 1101,
    "builtin_weather": 1102,
    "builtin_social": 2201,
    "builtin_science": 2202,
    "builtin_products": 3301,
    "builtin_restaurants": 3302,
    "builtin_people": 4401,
    "builtin_questions": 4402,
    "builtin_work": 5501,
    "builtin_nature": 5502,
}

GENERATORS: dict[str, Callable[..., dict]] = {
    "builtin_sports": summary.sports, "builtin_weather": summary.weather,
    "builtin_social": question.social, "builtin_science": question.science,
    "builtin_products": sentiment.products, "builtin_restaurants": sentiment.restaurants,
    "builtin_people": paraphrase.people, "builtin_questions": paraphrase.questions,
    "builtin_work": nli.work, "builtin_nature": nli.nature,
}


def _quotas(n: int, labels: tuple, offset: int) -> dict:
    """n items over the labels as evenly as possible; the remainder goes to labels in a rotating order."""
    base, extra = divmod(n, len(labels))
    q = {lab: base for lab in labels}
    for i in range(extra):
        q[labels[(offset + i) % len(labels)]] += 1
    return q


def _deal(rng: random.Random, pools: dict, quotas: dict) -> list:
    items = []
    for lab, k in quotas.items():
        items += [pools[lab].pop() for _ in range(k)]
    rng.shuffle(items)
    return items


def build_splits(info, seed: int) -> dict[str, list[dict]]:
    """All splits of one builtin data set, in memory (deterministic for a given seed)."""
    spec = get_task(info.task)
    make = GENERATORS[info.name]
    rng = random.Random(seed)
    labels = spec.labels if spec.is_classification else (None,)
    # (split name, size) in dealing order; train chunks are concatenated into the nested train sets.
    plan = [("demos_head", len(labels)), ("demos_tail", DEMO_POOL - len(labels)), ("test", TEST_SIZE)]
    if info.trains:
        prev = 0
        for i, size in enumerate(TRAIN_SIZES):
            plan.append((f"chunk{i}", size - prev))
            prev = size
    quotas = [(name, _quotas(n, labels, i)) for i, (name, n) in enumerate(plan)]
    need = {lab: sum(q[lab] for _, q in quotas) for lab in labels}
    pools = {lab: [] for lab in labels}
    seen: set = set()
    for lab in labels:
        tries = 0
        while len(pools[lab]) < need[lab]:
            tries += 1
            if tries > 100 * need[lab]:
                raise RuntimeError(f"{info.name}: the templates cannot make {need[lab]} distinct items")
            item = make(rng, lab)
            key = tuple(item[f] for f in spec.inputs)
            if key in seen:
                continue
            seen.add(key)
            pools[lab].append(item)
        pools[lab].reverse()  # pop() then deals items in generation order
    dealt = {name: _deal(rng, pools, q) for name, q in quotas}
    splits = {"test": dealt["test"], "demos": dealt["demos_head"] + dealt["demos_tail"]}
    if info.trains:
        train: list[dict] = []
        for i, size in enumerate(TRAIN_SIZES):
            train += dealt[f"chunk{i}"]
            splits[f"train_{size}"] = list(train)
    return splits


def generate(root=None, log=print) -> dict:
    """Write all builtin data sets into DATA_DIR (or root).  Returns {task/dataset: meta}."""
    infos = [BUILTIN_DATASETS[name] for name in GENERATORS]
    # Build everything first, so that a generator error leaves nothing half-written.
    plans = [(info, build_splits(info, SEEDS[info.name])) for info in infos]
    results = {}
    for info, splits in plans:
        meta = {
            "source": "builtin",
            "domain": info.domain,
            "description": info.description,
            "generator_version": GENERATOR_VERSION,
            "seed": SEEDS[info.name],
        }
        results[f"{info.task}/{info.name}"] = written = _data.write_dataset(info.task, info.name, splits, root, meta)
        counts = ", ".join(f"{k} {v['count']}" for k, v in written["files"].items())
        log(f"{info.task}/{info.name}: {counts}")
    return results
