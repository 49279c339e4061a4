"""The package's imports, read from the source (ast): no circle, and computing never imports showing.

Every import counts, also those inside functions (a lazy import is still a dependency). `from .x
import name` is an edge to .x.name where that is a module, else to .x; a package's __init__ is
not an edge of its own submodules (importing a.b runs a/__init__ first, which is no circle)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "wbcnet"

# They compute and return records; they never show (render/) or parse and answer (cli, serve).
COMPUTING = ["wbcnet.results", "wbcnet.count", "wbcnet.predict", "wbcnet.inference", "wbcnet.metrics",
             "wbcnet.shift", "wbcnet.checkpoint", "wbcnet.weights", "wbcnet.data", "wbcnet.models"]
SHOWING = ["wbcnet.render", "wbcnet.cli", "wbcnet.serve"]


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in known else root for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # wbcnet.x.y where y is a name in x
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_imports_it_should():
    edges = graph()
    assert "wbcnet.results" in edges["wbcnet.count"] and "wbcnet.render.draw" in edges["wbcnet.render.count"]
    assert "wbcnet.analysis" in edges["wbcnet.evaluate"]  # from . import analysis
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_computing_never_imports_showing():
    bad = [(a, b) for a, targets in graph().items() if under(a, COMPUTING)
           for b in targets if under(b, SHOWING)]
    assert not bad, bad
