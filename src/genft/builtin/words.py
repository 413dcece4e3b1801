"""Word lists and phrase helpers that more than one builtin task draws from."""
from __future__ import annotations

import random

NAMES = ["Alex", "Jordan", "Sam", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn", "Robin",
         "Charlie", "Dana", "Emery", "Frankie", "Harper", "Jesse", "Kai", "Logan", "Parker", "Reese", "Skyler"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def two(rng: random.Random, pool):
    a, b = rng.sample(pool, 2)
    return a, b
