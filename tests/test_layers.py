"""The layers point down only, with no import cycles (function-local imports included):
webui -> service -> jobs -> finetune, storage; Gradio only in webui and app.py."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webui", "service", "jobs", "finetune", "storage")
# what each package may import of ours, besides itself
ALLOWED = {
    "webui": {"service", "finetune", "storage"},
    "service": {"jobs", "finetune", "storage"},
    "jobs": {"finetune", "storage"},
    "finetune": set(),
    "storage": set(),
}
GRADIO = ("gradio", "gradio_client")


def imports(path: Path) -> set[str]:
    """Every module name `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def our_module(name: str) -> str | None:
    """`package.module` when `name` is (or is inside) one of our modules."""
    parts = name.split(".")
    if parts[0] not in PACKAGES or len(parts) < 2:
        return None
    return f"{parts[0]}.{parts[1]}" if (ROOT / parts[0] / f"{parts[1]}.py").is_file() else None


@functools.cache
def graph() -> dict[str, set[str]]:
    edges = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            module = f"{package}.{path.stem}"
            found = {our_module(n) for n in imports(path)} - {None, module}
            edges[module] = found
    return edges


MODULES = sorted(graph())


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    package = module.split(".")[0]
    path = ROOT / package / f"{module.split('.')[1]}.py"
    names = imports(path)
    upward = sorted(
        n for n in graph()[module] if n.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not upward, f"{module} imports {upward}: {package} may use {sorted(ALLOWED[package])}"
    if package != "webui":
        gradio = sorted(n for n in names if n.split(".")[0] in GRADIO)
        assert not gradio, f"{module} imports {gradio}: only webui and app.py use Gradio"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module)


def test_the_check_sees_an_upward_import(tmp_path):
    """The graph reads function-local imports too (a check that never fails proves nothing)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from webui.api import register_api\n", encoding="utf-8")
    assert our_module(next(n for n in imports(probe) if n.startswith("webui.api"))) == "webui.api"
