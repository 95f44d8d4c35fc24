"""The package's shape: commands stand side by side (a command imports the library, never another command),
the library never imports a command or the CLI, and no module imports itself back through others (lazy and
annotation-only imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports() -> dict[str, set[str]]:
    """Module -> the ltsam modules it imports (lazy imports inside functions and annotation-only ones under
    ``if TYPE_CHECKING:`` included: a loop through either still means a helper in the wrong module)."""
    modules = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ltsam"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                graph[name] |= subs or ({node.module} & modules.keys())
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
    return graph


def test_commands_import_the_library_never_another_command() -> None:
    graph = _imports()
    commands = {m for m in graph if m.startswith("ltsam.commands.")}
    assert {m.rsplit(".", 1)[1] for m in commands} >= {"train", "eval", "finetune", "hessian", "sweep", "report",
                                                        "recipes"}
    for m in commands:
        assert not {t for t in graph[m] if t.startswith("ltsam.commands") or t == "ltsam.cli"}, m
    for m in set(graph) - commands - {"ltsam.commands", "ltsam.cli", "ltsam.__main__"}:
        assert not {t for t in graph[m] if t.startswith("ltsam.commands") or t == "ltsam.cli"}, m


def test_no_import_loops() -> None:
    graph = _imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                loops.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    assert not loops, loops
