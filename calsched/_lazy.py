"""PEP 562 lazy re-exports: a package's names imported from their modules on first use.

The root package and :mod:`calsched.backend` both re-export names this way, so that
importing them costs nothing until a name is asked for.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, as calsched does

if TYPE_CHECKING:  # annotations only: collections.abc costs ~2 ms on every CLI call
    from collections.abc import Callable, Mapping

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: each name in ``homes`` is imported from
    the module ``homes`` names the first time it is asked for, then kept in the
    package's namespace, so later lookups skip the function.

    Example: ``__getattr__ = lazy_getattr(__name__, {"Journal": "calsched.journal.store"})``
    """

    def __getattr__(name: str) -> object:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
