"""What a cell's outputs say beyond its score: one-label answers, identical outputs between two arms,
repeated, empty and copied generations, labels the first-token rule never picks.  Pure functions of
`CellRecord`s.

Generations are compared after normalization (`normalize`: punctuation removed, white space folded), so an
output that copies a demonstration's target up to a trailing " ." counts as a copy, and two arms whose
outputs differ only in spacing or punctuation count as identical."""
from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Sequence

import numpy as np

from ..metrics import PRED, PREDFIRST, clean_generation, label_metric
from ..prompts import get_task
from ..suite.store import CellRecord


def normalize(text: str) -> str:
    """A generation as the diagnostics compare it: punctuation (Unicode category P*) removed, runs of white
    space folded to one space, stripped.  Case is kept."""
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(kept.split())


def outputs(rec: CellRecord) -> list[str]:
    """Per item: the predicted label (first-token rule), or the generation as it is scored (stripped, then cut
    at the first blank line) and normalized (`normalize`)."""
    if get_task(rec.task).is_classification:
        return list(rec.outputs)
    return [normalize(clean_generation(o)) for o in rec.outputs]


def _values(rec: CellRecord, name: str) -> list[float]:
    return [v for v in rec.items.get(name, []) if v is not None]


def label_distribution(rec: CellRecord, rule: str) -> dict[str, float]:
    """Share of the items given each label under one rule (PREDFIRST: first token, PRED: full label)."""
    return {lab: float(np.mean(_values(rec, label_metric(rule, lab)))) for lab in get_task(rec.task).labels
            if _values(rec, label_metric(rule, lab))}


def top_label(recs: Sequence[CellRecord]) -> tuple[str, float] | None:
    """The most frequent first-token prediction over the items of these replicates, and its share."""
    if not recs or not get_task(recs[0].task).is_classification:
        return None
    counts = Counter(o for r in recs for o in r.outputs)
    label, k = max(sorted(counts.items()), key=lambda kv: kv[1])
    return label, k / sum(counts.values())


def one_label(recs: Sequence[CellRecord], share: float) -> str | None:
    """Why an arm sits at the floor: it answers one label on >= `share` of its items (pooled over its
    replicates) and scores at or below the test set's majority rate; None when it does not."""
    top = top_label(recs)
    if top is None or top[1] < share:
        return None
    score = float(np.mean([r.score for r in recs]))
    majority = recs[0].majority_rate
    if majority is not None and score > majority + 1e-9:
        return None
    return f"answers {top[0]!r} on {top[1]:.0%} (score {score:.3f} ≤ majority {majority:.3f})" if majority is not None \
        else f"answers {top[0]!r} on {top[1]:.0%}"


def same_output_share(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> float:
    """a, b: per replicate, per item outputs on the same items.  The share of items on which every replicate of
    both arms gives the same output."""
    n = len(a[0])
    same = sum(len({rows[i] for rows in (*a, *b)}) == 1 for i in range(n))
    return same / n if n else float("nan")


def repeated_share(rec: CellRecord) -> float:
    """Generation: the share of items whose (non-empty, normalized) output is the cell's most frequent output,
    when that output occurs on two or more items: a model repeating one text (often a demonstration's target)
    for different inputs."""
    outs = outputs(rec)
    counts = Counter(o for o in outs if o)
    if not counts:
        return 0.0
    k = max(counts.values())
    return k / len(outs) if k > 1 else 0.0


def empty_share(rec: CellRecord) -> float:
    """Generation: the share of items whose normalized output is empty."""
    outs = outputs(rec)
    return sum(not o for o in outs) / len(outs) if outs else 0.0


def demo_copy_share(rec: CellRecord) -> float | None:
    """Generation: the share of items whose normalized output is the normalized target of one of the
    demonstrations the item was given (None where the record does not say which demonstrations: random demos,
    0 shots)."""
    if not rec.demo_targets:
        return None
    targets = {normalize(t) for t in rec.demo_targets if normalize(t)}
    outs = outputs(rec)
    return sum(o in targets for o in outs) / len(outs) if outs else None


def never_first(recs: Sequence[CellRecord]) -> list[str]:
    """Labels of a classification test set that the first-token rule never predicts in any of these cells while
    the full-label rule does: the signature of two labels sharing their first token (the rule can then only
    pick the first of them)."""
    if not recs or not get_task(recs[0].task).is_classification:
        return []
    out = []
    for lab in get_task(recs[0].task).labels:
        first = sum(sum(_values(r, label_metric(PREDFIRST, lab))) for r in recs)
        full = sum(sum(_values(r, label_metric(PRED, lab))) for r in recs)
        if first == 0 and full > 0:
            out.append(lab)
    return out
