"""The package's import arrows point one way (entry -> methods -> judges -> endpoints; output
depends on rows only) and the folders stay walkable. Every ``import`` counts, the ones inside
functions included: a lazy import hides a circle from Python, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("builders", "trainers", "cards", "experiments")


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in known:
                    out.add(full)
                elif node.module in known:
                    out.add(node.module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(graph()) == []


def test_cycle_finder_sees_a_lazy_circle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_arrows_point_one_way():
    g = graph()
    layer_of = {"builders.judges": "judges", "builders.methods": "methods", "builders.output": "output", "builders.sources": "sources"}

    def layer(m):
        return next((v for k, v in layer_of.items() if m == k or m.startswith(k + ".")), None)

    for m, deps in g.items():
        lm = layer(m)
        for d in deps:
            ld = layer(d)
            assert not (lm == "judges" and ld == "methods"), f"{m} (judges) imports {d} (methods)"
            assert not (lm in ("judges", "methods", "sources", "output") and d in ("builders.build", "builders.cli")), f"{m} imports the entry point {d}"
            assert not (lm == "output" and ld in ("judges", "methods")), f"{m} (output) imports {d}"
            assert not (lm == "sources" and ld in ("judges", "methods", "output")), f"{m} (sources) imports {d}"
            assert not (not m.startswith("experiments") and d.startswith("experiments")), f"{m} imports the experiment {d}"


def test_experiments_are_seen_and_import_the_packages():
    g = graph()
    assert "experiments.negatives.run" in g
    assert any(d.startswith("builders") for d in g["experiments.negatives.run"])


def test_folders_stay_walkable():
    top = [p for p in (ROOT / "builders").glob("*.py")]
    assert len(top) <= 12, sorted(p.name for p in top)
    for method in ("rlhn", "arhn", "clear", "percpos"):
        assert (ROOT / "builders" / "methods" / method / "__init__.py").is_file()
