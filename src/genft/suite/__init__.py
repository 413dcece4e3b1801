"""Suites (transitional: the engine is being split into this package; suite_legacy holds the rest)."""
from ..suite_legacy import *  # noqa: F401,F403
from ..suite_legacy import _write_atomic  # noqa: F401
