"""The package's shape: dependencies point one way (no import cycle anywhere in src/genft, counting imports
inside functions too, so that none can be dodged), and the suite package never imports the report.  The
benchmark scripts' modules (benchmarks/) stay small and import one another one way too."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BENCHMARKS = SRC.parent / "benchmarks"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ancestors(mod: str) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(src: Path = SRC, package: str = "genft") -> dict[str, set[str]]:
    """module -> the modules of `package` (under `src`) that importing it runs (imports anywhere in the file).

    Every edge Python really takes counts, a package's `__init__` included: `import p.a` (or `from p.a import
    x`) runs `p`'s `__init__` and then `p.a`; a package's `__init__` that imports its own submodules runs them.
    Only what is already running is left out: the packages above the importing module itself (`from . import
    b` inside `p.a` runs `p.b`, not `p` again), unless the import reads a name `p`'s `__init__` defines, which
    is a real dependency on the `__init__` having run that far."""
    modules = {_module_name(p, src): p for p in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def known(name: str) -> str:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    for mod, path in modules.items():
        package_of = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        running = _ancestors(mod) | {mod}  # imported (or being imported) before mod's own code runs
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: set[tuple[str, bool]] = set()  # (module, whether a name its own code defines is read)
            if isinstance(node, ast.Import):
                targets = {(known(a.name), False) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package_of.split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.add((sub, False) if sub in modules else (known(base), True))
            for t, reads_name in targets:
                if not t:
                    continue
                for step in sorted(_ancestors(t) | {t}):  # the packages above t run first, then t
                    if step in modules and step != mod and (step not in running or step == t and reads_name):
                        graph[mod].add(step)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_in_genft():
    graph = import_graph()
    assert "genft.suite.planning" in graph and "genft.suite.store" in graph["genft.suite.run"] | graph[
        "genft.suite.planning"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # through a package's __init__: importing p runs p.a, which runs q, which needs p
    assert _cycle({"p": {"p.a"}, "p.a": {"q"}, "q": {"p"}}) == ["p", "p.a", "q", "p"]


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _imports(src: Path, module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=src, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)}, timeout=60)


def test_the_graph_sees_a_cycle_through_a_package_init(tmp_path):
    """p/__init__ imports p.a, p.a imports the package q, q reads a name from p: the graph has the cycle, and
    Python itself fails on it; with q reading from another package instead there is no cycle and it imports."""
    files = {"top/__init__.py": "",
             "top/p/__init__.py": "from .a import A\nNAME = 1\n",
             "top/p/a.py": "from .. import q\nA = 2\n",
             "top/q/__init__.py": "from top.p import NAME\n"}
    src = _package(tmp_path / "bad", files)
    graph = import_graph(src, "top")
    assert {"top.p.a"} <= graph["top.p"] and "top.q" in graph["top.p.a"] and "top.p" in graph["top.q"]
    assert _cycle(graph) == ["top.p", "top.p.a", "top.q", "top.p"]
    assert "partially initialized module 'top.p'" in _imports(src, "top.p").stderr
    src = _package(tmp_path / "good", {**files, "top/q/__init__.py": "from top.r.s import NAME\n",
                                       "top/r/__init__.py": "", "top/r/s.py": "NAME = 1\n"})
    graph = import_graph(src, "top")
    assert _cycle(graph) is None and graph["top.q"] == {"top.r", "top.r.s"}  # running r.s runs r first
    assert _imports(src, "top.p").returncode == 0


def test_imports_of_what_is_already_running_are_not_edges(tmp_path):
    """`from . import b` inside p.a runs p.b only (p is being imported already); a package importing its own
    submodules is an edge; an import inside a function counts like any other."""
    src = _package(tmp_path, {"top/__init__.py": "",
                              "top/p/__init__.py": "from . import a\n",
                              "top/p/a.py": "from . import b\nimport top.p\n",
                              "top/p/b.py": "def f():\n    from top import r\n",
                              "top/r.py": ""})
    graph = import_graph(src, "top")
    assert graph["top.p"] == {"top.p.a"} and graph["top.p.a"] == {"top.p.b"} and graph["top.p.b"] == {"top.r"}
    assert _cycle(graph) is None and _imports(src, "top.p").returncode == 0


def test_the_suite_package_never_imports_the_report_and_stays_small():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("genft.suite"):
            assert not any(d.startswith("genft.report") or d == "genft.cli" for d in deps), (mod, deps)
    for path in (SRC / "genft" / "suite").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path


def test_the_benchmark_modules_stay_small_and_import_one_way():
    """benchmarks/: every module at most 500 lines, and no import cycle among them (their imports of one another
    anywhere in a file: they import each other as top-level modules, from the folder on sys.path)."""
    modules = {p.stem: p for p in BENCHMARKS.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module in modules:
                graph[mod].add(node.module)
    assert {"roofline", "run_conditions"} <= graph["eval_speed"] | graph["eval_cells"] | graph["eval_report"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
