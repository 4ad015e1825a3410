"""Frameworks behind one small protocol, found by name.

Adding a framework = one file ``gan_core/frameworks/<name>.py`` that defines a class decorated
with ``@register("<name>")`` (or that decorator anywhere else, before the name is used).
``get_framework(name)`` imports that file on first use. A framework declares next to its code its
parameters (``Params``: the config's ``fw`` section), its loss defaults and its Ray Tune ranges.

>>> sorted(available())[:2]
['cyclegan', 'dcgan']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gan_core.frameworks.base import Framework, GANFramework, ImagePool
from gan_core.registry import Registry

if TYPE_CHECKING:
    from gan_core.config import TrainConfig

__all__ = ["Framework", "GANFramework", "ImagePool", "FRAMEWORKS", "register", "get_framework",
           "available", "build_framework"]

#: every framework by name: the modules of this package and any registered elsewhere
FRAMEWORKS: Registry[type[GANFramework]] = Registry("framework", __name__)
register = FRAMEWORKS.register
available = FRAMEWORKS.names
get_framework = FRAMEWORKS.get


def build_framework(cfg: "TrainConfig", device: str = "cpu") -> GANFramework:
    """Instantiate the framework named by ``cfg.framework`` with its networks and optimizers."""
    cls = get_framework(cfg.framework)
    if not isinstance(cfg.fw, cls.Params):
        raise TypeError(f"framework {cfg.framework!r} takes fw = {cls.Params.__qualname__}, got "
                        f"{type(cfg.fw).__qualname__}: build the config with gan_core.presets")
    return cls(cfg, device=device)
