"""The house rules a newcomer relies on: no import loops, and a core that never imports the binding."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "capi_fast"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            found = visit(dep, path + [node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_no_python_module_imports_itself_back_at_import_time():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: not TYPE_CHECKING, not lazy
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("capi_fast"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("capi_fast"))
        graph[name] = deps - {name}
    assert _cycle(graph) is None, f"import loop: {' -> '.join(_cycle(graph) or [])}"


def test_rust_core_never_uses_the_binding_and_bindings_do_not_loop():
    uses: dict[str, set[str]] = {}
    for path in (ROOT / "rust").rglob("*.rs"):
        module = "py::" + path.stem if path.parent.name == "py" else path.stem
        text = path.read_text()
        found = set(re.findall(r"crate::(\w+)", text))
        if path.parent.name == "py":
            found |= {"py::" + m for m in re.findall(r"super::(\w+)", text)}
        uses[module] = found - {module}
        if path.parent.name != "py" and path.stem != "lib":
            assert "py" not in found and "pyo3" not in text, f"rust/{path.name} is core: it must not touch Python"
    bindings = {m: {d for d in deps if d.startswith("py::")} for m, deps in uses.items() if m.startswith("py::")}
    assert _cycle(bindings) is None, f"binding import loop: {_cycle(bindings)}"
