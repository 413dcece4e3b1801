"""Marked sections of a shared Markdown report (reports/benchmarks.md).

Several benchmark scripts write into one file.  A script that owns only a section writes it between
`<!-- NAME:start -->` and `<!-- NAME:end -->` lines and leaves everything else as it is; a script that owns the
rest of the file (benchmarks/eval_speed.py) rewrites its own text and carries the marked sections over.
"""
from __future__ import annotations

import re
from pathlib import Path

from genft.files import atomic_write


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _pattern(name: str) -> re.Pattern:
    start, end = markers(name)
    return re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)


def extract(text: str, name: str) -> str | None:
    """The marked block of `name` (markers included), or None.  A start marker without its end is an error."""
    start, end = markers(name)
    m = _pattern(name).search(text)
    if m is None:
        if start in text or end in text:
            raise ValueError(f"block {name}: a start marker with no end marker (or an end with no start: "
                             f"{start!r} / {end!r}); fix the file by hand (not written)")
        return None
    return m.group(0)


def check(text: str) -> None:
    """ValueError naming the first marked section of `text` whose markers do not pair up."""
    for name in section_names(text):
        extract(text, name)


def write_text(path: str | Path, text: str) -> None:
    """Write the whole file atomically (genft's one atomic write: never a partial file)."""
    atomic_write(Path(path), text.encode("utf-8"))


def upsert(text: str, name: str, body: str) -> str:
    """`text` with the section `name` replaced by `body` (or appended at the end when it has none)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    if extract(text, name) is not None:
        return _pattern(name).sub(lambda _: block, text, count=1)
    # the existing text stays byte for byte; one blank line before the new section
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{sep}{block}\n"


def write_section(path: str | Path, name: str, body: str) -> None:
    """Write the section `name` into the file at `path` (created if absent); the rest of the file is kept."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    check(old)
    write_text(path, upsert(old, name, body))


def section_names(text: str) -> list[str]:
    """The names of the marked sections in `text`, in order."""
    return list(dict.fromkeys(re.findall(r"<!-- ([^\s>]+?):start -->", text)))


def carry_over(old_text: str, new_text: str, names=None) -> str:
    """`new_text` followed by the marked sections of `old_text` (those in `names`, default: every one) that
    `new_text` does not have: a script rewriting the file keeps the sections other scripts own."""
    out = new_text
    for name in section_names(old_text) if names is None else names:
        block = extract(old_text, name)
        if block is not None and extract(out, name) is None:
            out = out.rstrip("\n") + "\n\n" + block + "\n"
    return out
