"""One generic name -> plug-in registry (frameworks, tasks, networks).

A registry has a kind (for messages) and, optionally, the package its plug-ins live in: one module
per plug-in, named like it, imported on first use. Names registered from anywhere else (a toy
framework defined in a test file) count as much as the package's modules.

>>> shapes = Registry[type]("shape")
>>> @shapes.register("square")
... class Square:
...     pass
>>> Square.name, shapes.get("square") is Square, "square" in shapes, shapes.names()
('square', True, True, ['square'])
>>> shapes.get("circle")
Traceback (most recent call last):
...
KeyError: "unknown shape 'circle'; available: ['square']"
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins of one ``kind`` by name; ``package``: where ``<package>.<name>`` modules define
    them (``None``: only what is registered explicitly)."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}

    # -- adding ------------------------------------------------------------------------------
    def add(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; ValueError when the name is taken by another item."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name: expected a non-empty string, got {name!r}")
        old = self._items.get(name)
        if old is not None and not _same(old, item):
            raise ValueError(f"{self.kind} {name!r} is already registered ({_qualname(old)})")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register a class or function as ``name`` and set its ``.name``."""

        def deco(item: T) -> T:
            item.name = name  # type: ignore[attr-defined]
            return self.add(name, item)

        return deco

    def remove(self, name: str) -> None:
        """Forget ``name`` (KeyError if it is not registered)."""
        if name not in self._items:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        del self._items[name]

    # -- looking up --------------------------------------------------------------------------
    def _modules(self) -> list[str]:
        if self.package is None:
            return []
        path = getattr(importlib.import_module(self.package), "__path__", [])
        return [m.name for m in pkgutil.iter_modules(path)
                if m.name != "base" and not m.name.startswith("_")]

    def names(self) -> list[str]:
        """Every name: the package's plug-in modules and whatever was registered elsewhere."""
        return sorted(set(self._modules()) | set(self._items))

    def get(self, name: str) -> T:
        """The plug-in ``name``, importing ``<package>.<name>`` on a miss; KeyError naming the
        available ones if there is none."""
        if name not in self._items and isinstance(name, str) and name in self._modules():
            importlib.import_module(f"{self.package}.{name}")
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown {self.kind} {name!r}; available: {self.names()}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.package!r})"


def _qualname(item: object) -> str:
    return f"{getattr(item, '__module__', '?')}.{getattr(item, '__qualname__', repr(item))}"


def _same(old: object, new: object) -> bool:
    """The same plug-in: the same object, or a class/function of the same qualified name (its
    module imported again, e.g. by ``importlib.reload``)."""
    return old is new or (hasattr(old, "__qualname__") and _qualname(old) == _qualname(new))
