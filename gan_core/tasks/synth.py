"""Unconditional synthesis of ``task.modality`` slices (DCGAN, LAPGAN): no network input.

``A`` has zero channels; the framework draws its own noise. Quality is measured by the
in-domain Fréchet distance (``gan_core.fid``), not by a per-subject metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gan_core.config import TaskConfig
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task


@register("synth")
class Synthesis(Task):
    @dataclass
    class Params(TaskConfig):
        """``task.*`` of unconditional synthesis."""

        name: str = "synth"
        modality: str = "ct"    # which modality to synthesize: ct | mr

    source = ""
    in_channels = 0

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.modality not in ("ct", "mr"):
            raise ValueError(f"task.modality: expected ct | mr, got {cfg.modality!r}")
        self.target = cfg.modality

    def degrade(self, slab, rng) -> Degraded:
        z, h, w = np.asarray(slab[self.target]).shape
        return Degraded(np.zeros((0, z, h, w), np.float32))
