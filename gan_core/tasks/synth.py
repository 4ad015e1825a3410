"""Unconditional synthesis of ``task.modality`` slices (DCGAN, LAPGAN): no network input.

``A`` has zero channels; the framework draws its own noise. Quality is measured by the
in-domain Fréchet distance (``gan_core.eval.fid``), not by a per-subject metric.
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

    def cohort_report(self, models, test_shards, out_dir, *, train_shards=None, seed=0,
                      device="cpu") -> dict:
        """In-domain Fréchet distance of each model's samples to the real test slices
        (``gan_core.eval.synthesis.synthesis_report``); needs the real training split."""
        from gan_core.eval.synthesis import synthesis_report

        if train_shards is None:
            raise ValueError("synth: the in-domain Fréchet distance needs the training shards "
                             "(its feature extractor is trained on the real training split)")
        return synthesis_report(models, train_shards, test_shards, out_dir, seed=seed, device=device)
