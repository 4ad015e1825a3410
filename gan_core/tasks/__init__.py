"""Tasks: what a network maps from and to, found by name (as frameworks are).

A task turns one subject's normalised slab (``mr``, ``ct``, ``mask`` and, where packed,
``labels``; each ``(Z, H, W)``) into the network input ``A`` (a degradation, another modality or a
label map) and names the slab array that is the target ``B``. It also owns the task's
inference-time post-processing (e.g. k-space data consistency), its non-learned baseline and its
metrics, and declares its parameters (``Params``: the config's ``task`` section), loss/model
defaults and Ray Tune ranges. Adding a task = one file ``gan_core/tasks/<name>.py`` with a class
decorated ``@register("<name>")`` (or that decorator anywhere else, before the name is used).

>>> build_task(task_config("ct2mr")).target
'mr'
>>> task_config("kspace", acceleration=8).acceleration
8
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from gan_core.registry import Registry
from gan_core.tasks.base import Degraded, Task

if TYPE_CHECKING:
    from gan_core.config import TaskConfig

__all__ = ["Degraded", "Task", "TASKS", "register", "available", "get_task", "build_task",
           "task_config"]

#: every task by name: the modules of this package and any registered elsewhere
TASKS: Registry[type[Task]] = Registry("task", __name__)
register = TASKS.register
available = TASKS.names
get_task = TASKS.get


def build_task(cfg: "TaskConfig") -> Task:
    """The task named by ``cfg.name``, with its parameters (``cfg``: the task's ``Params``)."""
    cls = get_task(cfg.name)
    if not isinstance(cfg, cls.Params):
        raise TypeError(f"task {cfg.name!r} takes a {cls.Params.__qualname__} config "
                        f"(gan_core.tasks.task_config), got {type(cfg).__qualname__}")
    return cls(cfg)


def task_config(name: str, **params: Any) -> "TaskConfig":
    """The task's ``Params`` with ``name`` and the given parameters (values taken as given: the
    task validates them); ValueError naming an unknown parameter."""
    cls = get_task(name).Params
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {['task.' + k for k in unknown]} for task "
                         f"{name!r}; expected one of {sorted(fields)}")
    return cls(name=name, **params)
