"""The installed package's version, read once from its metadata (pyproject.toml).

A module of its own, at the bottom layer, so that any module may import it without
importing the root package's public surface (:mod:`calsched` re-exports it).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("calsched")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0"
