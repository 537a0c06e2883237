"""The module map's rules (README, "Development"), read from the source's imports.

Every ``import`` and ``from ... import`` of an ocspd module counts, at module level,
inside functions and under ``TYPE_CHECKING`` alike: the graph has no cycle, and each
layer imports only what lies below it (web → responder → signer/sources → status; the
composition root wires them, the daemon starts it).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ocspd"

# module (or package prefix) → ocspd modules it must not import (prefixes too).
FORBIDDEN = {
    "ocspd.web": ("ocspd.app", "ocspd.daemon", "ocspd.server", "ocspd.workers", "ocspd.cli", "ocspd.commands",
                  "ocspd.store", "ocspd.signer", "ocspd.keys", "ocspd.hsm", "ocspd.tokens", "ocspd.index",
                  "ocspd.sources", "ocspd.importer"),
    "ocspd.responder": ("ocspd.web", "ocspd.app", "ocspd.store", "ocspd.index", "ocspd.daemon", "ocspd.server",
                        "ocspd.keys", "ocspd.hsm", "ocspd.tokens"),
    "ocspd.keys": ("ocspd.web", "ocspd.app", "ocspd.responder", "ocspd.store", "ocspd.cache", "ocspd.sources"),
    "ocspd.store": ("ocspd.web", "ocspd.app", "ocspd.responder", "ocspd.signer", "ocspd.index", "ocspd.server"),
    "ocspd.signer": ("ocspd.web", "ocspd.app", "ocspd.responder", "ocspd.store", "ocspd.cache", "ocspd.sources",
                     "ocspd.keys", "ocspd.tokens"),
    "ocspd.hsm": ("ocspd.web", "ocspd.app", "ocspd.responder", "ocspd.store", "ocspd.cache", "ocspd.sources",
                  "ocspd.signer", "ocspd.config", "ocspd.tokens"),
    "ocspd.tokens": ("ocspd.web", "ocspd.app", "ocspd.responder", "ocspd.store", "ocspd.cache", "ocspd.sources",
                     "ocspd.signer", "ocspd.config"),
    "ocspd.protocol": ("ocspd.web", "ocspd.app", "ocspd.responder", "ocspd.store", "ocspd.signer", "ocspd.cache"),
    "ocspd.status": ("ocspd.",),
    "ocspd.der": ("ocspd.",),
}  # fmt: skip
# Third-party modules only some rooms may import.
ONLY_IN = {
    "psycopg": ("ocspd.store",),  # only the store talks to the database driver
    "pkcs11": ("ocspd.hsm",),  # only the signer's token half touches PKCS#11 (and loads it only when used)
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


@cache
def _imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports (absolute names; ocspd's resolved to modules where they are)."""
    modules = _modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(modules[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{module}: a relative import (ocspd imports absolutely)"
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
    return frozenset(found - {module})


def _ocspd_imports(module: str) -> list[str]:
    return sorted(name for name in _imports(module) if name in _modules())


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def test_the_import_graph_has_no_cycle() -> None:
    modules = _modules()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in _ocspd_imports(module):
            if state.get(imported) == "open":
                # A package's __init__ re-exporting its modules is not a cycle of rooms.
                cycle = [*path[path.index(imported) :], imported]
                if not all(_within(m, imported) for m in cycle[1:-1]):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_the_layers_below_it(room: str) -> None:
    wrong = {
        module: [name for name in _ocspd_imports(module) if any(_within(name, bad) for bad in FORBIDDEN[room])]
        for module in _modules()
        if _within(module, room)
    }
    assert {module: names for module, names in wrong.items() if names} == {}


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_a_third_party_library_is_imported_only_in_its_room(library: str) -> None:
    outside = [
        module
        for module in _modules()
        if any(_within(name, library) for name in _imports(module))
        and not any(_within(module, room) for room in ONLY_IN[library])
    ]
    assert outside == []


def test_the_rules_see_the_imports() -> None:
    """The reader finds what it must: were it blind, the rules above would pass on anything."""
    assert "ocspd.responder" in _ocspd_imports("ocspd.web.handlers")
    assert "ocspd.app" in _ocspd_imports("ocspd.server")
    assert "psycopg" in _imports("ocspd.store.connector")
    assert "pkcs11" in _imports("ocspd.hsm")
    assert len(_modules()) > 40
