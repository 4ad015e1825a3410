"""Tasks: what a network maps from and to, found by name (as frameworks are).

A task turns one subject's normalised slab (``mr``, ``ct``, ``mask`` and, where packed,
``labels``; each ``(Z, H, W)``) into the network input ``A`` (a degradation, another modality or a
label map) and names the slab array that is the target ``B``. It also owns the task's
inference-time post-processing (e.g. k-space data consistency), its non-learned baseline and its
metrics. Adding a task = one file ``gan_core/tasks/<name>.py`` with a class decorated
``@register("<name>")``.

>>> from gan_core.config import TaskConfig
>>> build_task(TaskConfig(name="ct2mr")).target
'mr'
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from gan_core.tasks.base import Degraded, Task

if TYPE_CHECKING:
    from gan_core.config import TaskConfig

_REGISTRY: dict[str, type[Task]] = {}

__all__ = ["Degraded", "Task", "register", "available", "get_task", "build_task"]


def register(name: str):
    """Class decorator adding a task to the registry under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of all tasks shipped in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name`` (imports ``gan_core.tasks.<name>``)."""
    if name not in _REGISTRY:
        if name not in available():
            raise KeyError(f"unknown task {name!r}; available: {available()}")
        importlib.import_module(f"gan_core.tasks.{name}")
    return _REGISTRY[name]


def build_task(cfg: "TaskConfig") -> Task:
    """The task named by ``cfg.name``, with its parameters."""
    return get_task(cfg.name)(cfg)
