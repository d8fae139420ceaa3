"""The layers of relay/ as docs/ARCHITECTURE.md orders them, checked over the source.

Every ``import`` in relay/ (module level or inside a function) is read with
``ast``: a module may import only its own layer or a lower one, protocol/ and
policy/ nothing that does I/O or reads the clock, and no modules import each
other in a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[1] / "relay"

# Lowest first; a module belongs to the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("relay", "relay.errors"),
    ("relay.protocol",),
    ("relay.message", "relay.stats"),
    # values the config is made of
    (
        "relay.spool.settings",
        "relay.tls.profile",
        "relay.policy.selector",
        "relay.policy.filter",
        "relay.policy.redact",
        "relay.jsonsettings",
        "relay.policy.http",
    ),
    ("relay.config",),
    # `relay import-rsyslog`'s converter: reads selectors, writes TOML text
    ("relay.importer",),
    ("relay.policy",),
    ("relay.spool", "relay.tls", "relay.service"),
    ("relay.inputs", "relay.outputs", "relay.observe"),
    ("relay.app", "relay.workers"),
    ("relay.cli", "relay.__main__"),
)
# No I/O, no clock, no event loop: time is passed in.
PURE = (
    "relay.protocol",
    "relay.policy",
    "relay.spool.settings",
    "relay.tls.profile",
    "relay.importer",
    "relay.jsonsettings",
)
IMPURE = ("trio", "socket", "os", "time", "ssl", "select", "asyncio", "subprocess")


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(RELAY.rglob("*.py"))}


def imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports (a ``from X import Y`` of a module is X.Y)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


def layer(name: str) -> int:
    best, found = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found >= 0, f"{name} is in no layer of LAYERS: place it in docs/ARCHITECTURE.md too"
    return found


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 30
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    mine = layer(name)
    upward = [
        target for target in imports(name) if target.startswith("relay") and layer(target) > mine
    ]
    assert not upward, f"{name} (layer {mine}) imports higher layers: {upward}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(PURE)))
def test_pure_layers_do_no_io(name: str) -> None:
    found = [t for t in imports(name) if t.split(".")[0] in IMPURE]
    assert not found, f"{name} imports {found}"


def test_no_import_cycles() -> None:
    graph = {
        name: {t for t in imports(name) if t in MODULES and t != name and t != "relay"}
        for name in MODULES
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_checks_can_fail() -> None:
    """The rules above find what they look for (a layer test that finds nothing proves nothing)."""
    assert layer("relay.protocol.relp") < layer("relay.config") < layer("relay.app")
    assert "relay.protocol.rfc5424" in set(imports("relay.protocol.detect"))
    assert "relay.cli.sender" in set(imports("relay.cli.commands"))
    assert "trio" in {t.split(".")[0] for t in imports("relay.spool.spool")}
