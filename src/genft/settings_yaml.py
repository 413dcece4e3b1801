"""Bounded YAML reading for every settings file genft reads (suite files, `sft.py --config` recipes).

`yaml.safe_load` builds no objects from tags, but it is not bounded: a few hundred bytes of nested aliases
describe billions of nodes (an "alias bomb"), which anything that walks the result (validation, hashing,
`dataclasses.asdict`) then expands.  `load` composes the node graph first (linear in the text: an alias is a
reference, not a copy), refuses a file larger than MAX_BYTES, a graph that expands to more than MAX_NODES
nodes, a recursive alias, nesting deeper than MAX_DEPTH, and a key given twice in one mapping (YAML says
keys are unique; PyYAML keeps the last silently), each with the file and line; only then builds the values.
Anchors, aliases and merge keys (`<<: *defaults`) within these bounds work as usual.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a settings file; genft's largest suite is a few kB
MAX_NODES = 100_000  # nodes after expanding aliases
MAX_DEPTH = 200  # nested collections
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """A settings file that genft will not read: the message names the file (and line) and why."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return []


def _check_keys(node: yaml.MappingNode, where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == MERGE_TAG:
            continue
        ident = (k.tag, k.value)
        if ident in seen:
            raise YamlError(f"{where}:{_line(k)}: duplicate key {k.value!r} (first at line {seen[ident]}); a key "
                            "may appear once per mapping: keep one")
        seen[ident] = _line(k)


def check_graph(root: yaml.Node, where: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """The number of nodes `root` expands to (aliases counted at every use); YamlError for too many, a
    recursive alias, too deep a nesting or a duplicate key.  Iterative: no Python recursion limit applies."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool, int]] = [(root, False, 1)]
    while stack:
        node, expanded, depth = stack.pop()
        nid = id(node)
        if expanded:
            active.discard(nid)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > max_nodes:
                raise YamlError(f"{where}:{_line(node)}: the aliases here expand to more than {max_nodes} values "
                                "(an alias bomb?); genft refuses the file: write the values out, or use fewer "
                                "nested aliases")
            size[nid] = total
            continue
        if nid in size:
            continue
        if nid in active:
            raise YamlError(f"{where}:{_line(node)}: a recursive alias (a node that contains itself); genft "
                            "refuses the file")
        if depth > max_depth:
            raise YamlError(f"{where}:{_line(node)}: nested more than {max_depth} levels deep; genft refuses the file")
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, where)
        active.add(nid)
        stack.append((node, True, depth))
        for c in reversed(_children(node)):
            if id(c) not in size:
                stack.append((c, False, depth + 1))
    return size[id(root)]


def loads(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """(the values, the checked node graph) of a YAML text; `where` names it in errors (a file path)."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlError(f"{where}: nested too deeply to read; genft refuses the file") from None
        if node is None:
            return None, None
        check_graph(node, where)
        return loader.construct_document(node), node
    except yaml.YAMLError as e:
        raise YamlError(f"{where}: not valid YAML ({e})") from None
    finally:
        loader.dispose()


def load(path: str | os.PathLike) -> tuple[Any, yaml.Node | None]:
    """(the values, the node graph) of a settings file, bounded in size, expansion and depth (module doc)."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)  # (never more, whatever the file claims or becomes)
    if len(data) > MAX_BYTES:
        raise YamlError(f"{path}: more than {MAX_BYTES} bytes; genft reads settings files of at most {MAX_BYTES} "
                        "bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return loads(text, str(path))
