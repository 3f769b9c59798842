"""Architecture: lower layers never import upper ones (DESIGN.md, "Architecture").

The rule is data (``LAYERS``): each module may import its own layer and those below it.
Every import statement counts, including ones inside functions or ``TYPE_CHECKING``
blocks: a lazy import upwards is still an upward dependency. Every calsched module must
have a layer, so a new module is placed on purpose, not by accident.

A second rule, also data (``TESTS_ONLY``): production never imports the public fakes,
whatever its layer; only those modules themselves may.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "calsched"

#: Bottom to top. An entry covers the module and, except the root package, its submodules.
LAYERS: list[tuple[str, ...]] = [
    (
        "calsched._durable",
        "calsched._lazy",
        "calsched._version",
        "calsched.errors",
        "calsched.model",
        "calsched.status",
    ),
    ("calsched.lifecycle",),
    ("calsched.journal",),
    (
        "calsched.ports",
        "calsched.settings",
        "calsched.metrics",
        "calsched.logs",
        "calsched.tokens",
        "calsched.bodies",
        "calsched.tracing",
        "calsched.notify",
    ),
    ("calsched.scheduler",),
    ("calsched.backend", "calsched.host", "calsched.control", "calsched.mcp", "calsched.testing"),
    (
        "calsched.config",
        "calsched.daemon",
        "calsched.failpoints",
        "calsched.commands",
        "calsched.demo",
        "calsched.cli",
        "calsched.__main__",
    ),
    # The root package re-exports the public surface of every layer (lazily): no calsched
    # module may import it; __version__ is calsched._version, at the bottom.
    ("calsched",),
]

#: Modules for tests only: no other calsched module may import them, in any layer.
TESTS_ONLY: tuple[str, ...] = ("calsched.testing",)

#: Libraries the core (model, lifecycle, journal) must not use: it knows no HTTP, no
#: asyncio and no terminal (DESIGN.md: the journal "knows nothing of HTTP or asyncio").
CORE_TOP = 2
NOT_IN_CORE = {"asyncio", "httpx", "starlette", "uvicorn", "typer", "rich"}


def rank(module: str) -> int | None:
    """The layer of ``module``, by its longest matching entry; ``None`` if it has none."""
    best: tuple[int, int] | None = None
    for level, entries in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != "calsched" and module.startswith(entry + "."))
            if covers and (best is None or len(entry) > best[1]):
                best = (level, len(entry))
    return None if best is None else best[0]


def module_name(path: Path) -> str:
    """``calsched/journal/store.py`` -> ``calsched.journal.store``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the calsched source tree, by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(module: str, source: str, *, is_package: bool, known: Iterable[str]) -> set[str]:
    """The modules ``source`` imports, relative imports resolved, names mapped to modules."""
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                # `from calsched import journal` imports the module calsched.journal.
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return found


def for_tests_only(module: str) -> bool:
    """True for a module of :data:`TESTS_ONLY` (or inside one)."""
    return any(module == entry or module.startswith(entry + ".") for entry in TESTS_ONLY)


def violations(module: str, targets: Iterable[str]) -> list[str]:
    """Each import of ``module`` that reaches a higher layer, a module for tests only, or a
    library the core avoids."""
    own = rank(module)
    assert own is not None
    out: list[str] = []
    for target in sorted(targets):
        if for_tests_only(target) and not for_tests_only(module):
            out.append(f"{module} (production) imports {target} (tests only)")
        top = target.split(".")[0]
        if own <= CORE_TOP and top in NOT_IN_CORE:
            out.append(f"{module} (core) imports {target}")
        if top != "calsched":
            continue
        theirs = rank(target)
        if theirs is not None and theirs > own:
            out.append(f"{module} (layer {own}) imports {target} (layer {theirs})")
    return out


def test_every_module_has_a_layer() -> None:
    """Each calsched module is placed in LAYERS (add a new module there on purpose)."""
    unplaced = [name for name in all_modules() if rank(name) is None]
    assert unplaced == [], f"add these modules to LAYERS in {__file__}: {unplaced}"


def test_lower_layers_never_import_upper_ones() -> None:
    """No module imports a module of a higher layer; the core imports no HTTP/asyncio/CLI."""
    modules = all_modules()
    found: list[str] = []
    for name, path in modules.items():
        if rank(name) is None:
            continue  # reported by test_every_module_has_a_layer
        targets = imported(
            name, path.read_text(), is_package=path.name == "__init__.py", known=modules
        )
        found.extend(violations(name, targets))
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "is_package", "expected"),
    [
        (
            "calsched.model",
            "from calsched.scheduler import Scheduler",
            False,
            ["calsched.model (layer 0) imports calsched.scheduler (layer 4)"],
        ),
        (
            "calsched.journal.store",
            "def f():\n    from ..backend import http\n",
            False,
            ["calsched.journal.store (layer 2) imports calsched.backend.http (layer 5)"],
        ),
        (
            "calsched.journal",
            "from . import store\nfrom calsched import cli\n",
            True,
            ["calsched.journal (layer 2) imports calsched.cli (layer 6)"],
        ),
        (
            "calsched.lifecycle",
            "import httpx\nfrom calsched.model import Slot\n",
            False,
            ["calsched.lifecycle (core) imports httpx"],
        ),
        ("calsched.scheduler", "import asyncio\nfrom calsched.journal import Journal", False, []),
        (
            "calsched.cli",
            "from calsched._version import __version__\nimport calsched.model",
            False,
            [],
        ),
        (
            "calsched.backend.server",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from calsched.testing import FaultPlan\n",
            False,
            ["calsched.backend.server (production) imports calsched.testing (tests only)"],
        ),
        (
            "calsched.daemon",
            "def f():\n    from calsched import testing\n",
            False,
            ["calsched.daemon (production) imports calsched.testing (tests only)"],
        ),
        (
            "calsched.backend",
            "import calsched.testing as fakes\n",
            True,
            ["calsched.backend (production) imports calsched.testing (tests only)"],
        ),
        ("calsched.testing", "from calsched.backend.faults import FaultPlan", False, []),
    ],
    ids=[
        "upward",
        "relative-lazy",
        "package-relative",
        "core-http",
        "allowed",
        "downward",
        "fakes-same-layer",
        "fakes-from-above-lazy",
        "fakes-aliased",
        "fakes-import-production",
    ],
)
def test_checker_sees_violations(
    module: str, source: str, is_package: bool, expected: list[str]
) -> None:
    """The checker resolves absolute, relative and lazy imports and flags upward ones."""
    known = {
        "calsched.journal.store",
        "calsched.backend.http",
        "calsched.backend.faults",
        "calsched.cli",
        "calsched.model",
        "calsched.testing",
    }
    targets = imported(module, source, is_package=is_package, known=known)
    assert violations(module, targets) == expected


def test_tests_only_modules_exist() -> None:
    """Each TESTS_ONLY entry names a real module, so the rule cannot guard nothing."""
    assert set(TESTS_ONLY) <= set(all_modules())


def test_layer_entries_are_unique() -> None:
    """No module is listed in two layers."""
    entries = [entry for layer in LAYERS for entry in layer]
    assert len(entries) == len(set(entries))
