"""The package's import graph: no cycles, and no layer importing one above it.

Reads every module's import statements with ``ast`` (top-level and function-local
imports alike, without importing anything) and checks them against the layer order
documented in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "portmux"

# Lower number = lower layer. A module may import its own layer or lower ones.
LAYERS: dict[str, int] = {
    "portmux._twisted": 0,  # the quarantine of Twisted private names: a leaf
    "portmux.core.preamble": 0,
    "portmux.core.interfaces": 0,
    "portmux.core.refusal": 0,
    "portmux.core.deadlines": 0,
    "portmux.protocols": 1,
    "portmux.probes": 1,
    "portmux.plugins": 1,  # only a search path for drop-in probes
    "portmux.core": 2,  # routing, stats, mux
    "portmux.tls": 3,
    "portmux.targets": 4,
    "portmux.control": 5,
    "portmux.worker": 5,
    "portmux.client": 5,
    "portmux.testing": 6,
    "portmux.daemon": 7,
    "portmux.cli": 8,
    "portmux.__main__": 8,
    "portmux": 9,  # the public re-export module
}


def module_name(path: Path) -> str:
    """The dotted name of a module file under PACKAGE."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    """The layer of the longest LAYERS prefix of ``name``."""
    best = ""
    for prefix in LAYERS:
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return LAYERS[best]


def imports_of(path: Path, name: str) -> set[str]:
    """The portmux modules ``path`` imports (``from X import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue  # imports for annotations only are not run

        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names}
            known = submodules & set(all_modules())
            found.update(known if len(known) == len(submodules) else known | {module})
    modules = all_modules()
    return {m for m in found if m in modules and m != name}


def all_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    """Module -> the portmux modules it imports."""
    return {name: imports_of(path, name) for name, path in all_modules().items()}


def test_no_layer_imports_a_higher_one() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(name) and not name.startswith(target + ".")
    ]
    assert upward == []


def test_core_imports_no_target_control_tls_client_or_daemon() -> None:
    forbidden = ("portmux.targets", "portmux.control", "portmux.tls", "portmux.client",
                 "portmux.worker", "portmux.daemon")
    bad = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.startswith(("portmux.core", "portmux.protocols"))
        for target in targets
        if target.startswith(forbidden)
    ]
    assert bad == []


def test_no_import_cycle() -> None:
    edges = graph()
    # A package importing its own submodules (re-exports) is not a cycle of behaviour.
    for name in edges:
        edges[name] = {t for t in edges[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_every_module_names_its_tests() -> None:
    missing = [
        name for name, path in sorted(all_modules().items())
        if "test-case-name:" not in path.read_text(encoding="utf-8").split("\n", 3)[0]
        and path.name != "__main__.py"
    ]
    assert missing == []
