"""Optional dependencies of precise prefix routing, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require"]

EXTRA = "pip install 'llmlbd[precise]'"


class MissingExtra(ImportError):
    """A module of the ``precise`` extra (pyzmq, msgpack, tokenizers, jinja2) is not installed."""


def require(module: str) -> ModuleType:
    """Import *module* or raise MissingExtra naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{module} is needed for precise prefix routing (KV events); install it with {EXTRA}"
        ) from exc
