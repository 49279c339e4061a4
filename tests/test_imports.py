"""The package's imports, read from the source (ast): no circle, and computing never imports showing.

Every import counts, also those inside functions (a lazy import is still a dependency). `from .x
import name` is an edge to .x.name where that is a module, else to .x; a package's __init__ is
not an edge of its own submodules (importing a.b runs a/__init__ first, which is no circle)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "wbcnet"

# They compute and return records; they never show (render/) or parse and answer (cli, serve).
COMPUTING = ["wbcnet.core", "wbcnet.cells", "wbcnet.data", "wbcnet.models", "wbcnet.inference.runner",
             "wbcnet.inference.predict", "wbcnet.inference.count", "wbcnet.evaluation.metrics"]
SHOWING = ["wbcnet.render", "wbcnet.cli", "wbcnet.serve"]


# The packages from the bottom up (docs/architecture.md): a module imports from its own package and
# those below it, never from one above.
LAYERS = ["core", "cells", "data", "models", "render", "engine", "inference", "evaluation", "training", "lab",
          "serve", "cli"]


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in (src / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
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


def graph(src: Path = SRC) -> dict[str, set[str]]:
    mods = modules(src)
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


def layer(name: str) -> int | None:
    """The place of a module's package in LAYERS (None for wbcnet itself and __main__)."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_imports_it_should():
    edges = graph()
    assert "wbcnet.core.results" in edges["wbcnet.inference.count"] and "wbcnet.render.draw" in edges["wbcnet.render.count"]
    assert "wbcnet.evaluation.analysis" in edges["wbcnet.evaluation.evaluate"]  # from . import analysis
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_computing_never_imports_showing():
    bad = [(a, b) for a, targets in graph().items() if under(a, COMPUTING)
           for b in targets if under(b, SHOWING)]
    assert not bad, bad


def test_every_module_sits_in_a_layer():
    loose = [m for m in graph() if layer(m) is None and m not in (PACKAGE, f"{PACKAGE}.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_point_down():
    bad = upward_imports(graph())
    assert not bad, "imports from a higher layer: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_an_upward_import_is_caught(tmp_path):
    """A made-up package where core imports from cli: the walk must report that arrow, and only it."""
    pkg = tmp_path / PACKAGE
    for folder, body in {"core": "from ..cli.main import run\n", "cli": "from ..core.x import y\n"}.items():
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "x.py").write_text("from ..cli.main import run\ny = 1\n")
    (pkg / "cli" / "main.py").write_text("from ..core.x import y\n\ndef run():\n    return y\n")
    assert upward_imports(graph(tmp_path)) == [("wbcnet.core.x", "wbcnet.cli.main")]
