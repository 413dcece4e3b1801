"""Shared-prefix planning for `genft-hf`: which contexts of a call share a token prefix worth computing once.

The distinct contexts are sorted by token ids and cut into groups whose longest common token prefix is worth
sharing (`plan_prefix_groups`: an exact cost model over the sorted order, nothing task-specific).  Pure functions
of token sequences: no model, no torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["common_prefix_len", "plan_prefix_groups"]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


def plan_prefix_groups(
    seqs: Sequence[Sequence[int]], min_prefix: int = 8, overhead: int = 16, keep: int = 1
) -> list[tuple[int, list[int]]]:
    """Partition sequences into groups that share a token prefix worth computing once.

    Returns [(prefix_len, [indices into seqs])]; every member of a group starts with the same prefix_len
    tokens and keeps at least `keep` tokens after it.  The partition minimises the tokens to compute
    (prefix once + every member's suffix, plus `overhead` per shared prefix) over splits of the
    lexicographically sorted order at its common-prefix boundaries.  A prefix shorter than `min_prefix`
    is not shared (prefix_len 0).
    """
    n = len(seqs)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: tuple(seqs[i]))
    lens = [len(seqs[i]) for i in order]
    adj = [common_prefix_len(seqs[order[i]], seqs[order[i + 1]]) for i in range(n - 1)]

    def whole(lo: int, hi: int) -> tuple[float, int]:
        if hi - lo == 1:
            return float(lens[lo]), 0
        lcp = min(adj[lo : hi - 1])
        p = min(lcp, min(lens[lo:hi]) - keep)
        total = float(sum(lens[lo:hi]))
        if p < min_prefix:
            return total, 0
        return total - (hi - lo - 1) * p + overhead, p

    def best(lo: int, hi: int, depth: int) -> tuple[float, list[tuple[int, int, int]]]:
        cost, p = whole(lo, hi)
        plan = [(p, lo, hi)]
        if hi - lo > 1 and depth < 200:
            lcp = min(adj[lo : hi - 1])
            cuts = [i + 1 for i in range(lo, hi - 1) if adj[i] == lcp]
            split_cost, split_plan = 0.0, []
            for a, b in zip([lo] + cuts, cuts + [hi]):
                c, pl = best(a, b, depth + 1)
                split_cost += c
                split_plan += pl
                if split_cost >= cost:
                    break
            if split_cost < cost:
                return split_cost, split_plan
        return cost, plan

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 1000))
    try:
        _, plan = best(0, n, 0)
    finally:
        sys.setrecursionlimit(old)
    groups = []
    for p, lo, hi in plan:
        members = [order[i] for i in range(lo, hi)]
        if p == 0 and groups and groups[-1][0] == 0:
            groups[-1][1].extend(members)  # unshared neighbours batch together
        else:
            groups.append((p, members))
    return groups

