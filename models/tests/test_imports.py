"""The toolchain's modules import each other without a circle.

A circle (export importing train while train imports export) works only
as long as every such import stays inside a function; this reads every
`gnl` import, at the top and inside functions, and fails on a cycle.
"""

import ast
from pathlib import Path

GNL = Path(__file__).resolve().parents[1] / "gnl"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gnl":
            parts = node.module.split(".")
            deps |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gnl.")}
    return deps - {path.stem}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_cycles_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"]]


def test_no_import_circle_in_gnl():
    modules = {p.stem for p in GNL.glob("*.py")}
    graph = {p.stem: imports_of(p, modules) for p in GNL.glob("*.py")}
    assert graph["export"] and graph["train"], "the import reader found nothing"
    assert cycles(graph) == [], "gnl modules that import each other: " + "; ".join(" -> ".join(c) for c in cycles(graph))
