"""The import graph of the amsim package, lazy (function-level) imports included, and its cycles.

    python scripts/import_graph.py            # print the cycles (exit 1 if there are any)
    python scripts/import_graph.py --edges    # print every edge

Used by tests/test_architecture.py; standard library only, the modules are parsed, not imported.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "amsim"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(importer: str, is_pkg: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = importer.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def edges() -> dict[str, set[str]]:
    """module -> the amsim modules it imports (at any depth of the file, ``TYPE_CHECKING`` blocks excluded)."""
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                # "from . import x" may name a submodule
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name.startswith("amsim") and name != mod:
                    graph[mod].add(name)
    return graph


def _parents(mod: str):
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). A package's ``__init__`` importing its
    own submodules, and a submodule importing a sibling through the package, are ordinary and not counted:
    edges from a module to one of its parent packages are dropped."""
    g = {m: {t for t in ts if t not in _parents(m)} for m, ts in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", action="store_true")
    args = ap.parse_args(argv)
    graph = edges()
    if args.edges:
        for m in sorted(graph):
            for t in sorted(graph[m]):
                print(f"{m} -> {t}")
    found = cycles(graph)
    for c in found:
        print("cycle:", " <-> ".join(c))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
