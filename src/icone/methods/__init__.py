"""Methods, one module each, found by name in a registry.

Every module in this package that defines a :class:`Method` subclass with a ``name`` registers it
by being imported; ``registry()`` imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from icone.errors import UserError
from icone.methods.base import Method

_SKIP = {"base"}


def registry() -> dict[str, type[Method]]:
    """All methods by name, in a stable order (IConE and ExCB first)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SKIP:
            importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[Method]] = {}
    stack = list(Method.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.name:
            found[cls.name] = cls
    first = [n for n in ("icone", "excb") if n in found]
    return {n: found[n] for n in first + sorted(set(found) - set(first))}


def get_method(name: str) -> type[Method]:
    methods = registry()
    if name not in methods:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(methods)}")
    return methods[name]


def batch_free_methods(batch_size: int) -> list[str]:
    """Methods defined at this batch size."""
    return [n for n, m in registry().items() if m.min_batch_size <= batch_size]


__all__ = ["Method", "batch_free_methods", "get_method", "registry"]
