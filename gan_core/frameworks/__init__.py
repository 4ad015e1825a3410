"""Frameworks behind one small protocol, found by name.

Adding a framework = one file ``gan_core/frameworks/<name>.py`` that defines a class decorated
with ``@register("<name>")``. ``get_framework(name)`` imports that file on first use.

>>> sorted(available())[:2]
['cyclegan', 'pix2pix']
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from gan_core.frameworks.base import Framework, GANFramework, ImagePool

if TYPE_CHECKING:
    from gan_core.config import TrainConfig

_REGISTRY: dict[str, type[GANFramework]] = {}

__all__ = ["Framework", "GANFramework", "ImagePool", "register", "get_framework", "available",
           "build_framework"]


def register(name: str):
    """Class decorator adding a framework to the registry under ``name``."""

    def deco(cls: type[GANFramework]) -> type[GANFramework]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of all frameworks shipped in this package."""
    skip = {"base"}
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in skip)


def get_framework(name: str) -> type[GANFramework]:
    """The framework class registered as ``name`` (imports ``gan_core.frameworks.<name>``)."""
    if name not in _REGISTRY:
        if name not in available():
            raise KeyError(f"unknown framework {name!r}; available: {available()}")
        importlib.import_module(f"gan_core.frameworks.{name}")
    return _REGISTRY[name]


def build_framework(cfg: "TrainConfig", device: str = "cpu") -> GANFramework:
    """Instantiate the framework named by ``cfg.framework`` with its networks and optimizers."""
    return get_framework(cfg.framework)(cfg, device=device)
