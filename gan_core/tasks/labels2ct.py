"""Tissue label map -> CT (conditional synthesis from segmentation maps).

Input: the label map one-hot encoded over ``task.n_classes`` channels (values 0/1).
Baseline: each label painted with its mean training HU (a look-up table fitted on the train split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gan_core.config import TaskConfig
from gan_core.data.normalize import ct_to_unit, unit_to_ct
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task


def one_hot(labels: np.ndarray, n_classes: int, where: str = "labels") -> np.ndarray:
    """``(Z, H, W)`` integer labels -> ``(n_classes, Z, H, W)`` float32 one-hot."""
    lab = np.asarray(labels)
    if lab.size and int(lab.max()) >= n_classes:
        raise ValueError(f"{where}: label {int(lab.max())} >= n_classes {n_classes} "
                         "(set task.n_classes)")
    return (np.arange(n_classes, dtype=lab.dtype).reshape(-1, *([1] * lab.ndim)) == lab[None]
            ).astype(np.float32)


@register("labels2ct")
class LabelsToCT(Task):
    @dataclass
    class Params(TaskConfig):
        """``task.*`` of label map -> CT."""

        name: str = "labels2ct"
        n_classes: int = 10     # label values 0..n_classes-1 (the phantom's tissues)

    source, target = "labels", "ct"
    needs = ("labels",)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.in_channels = int(cfg.n_classes)
        self.lut_hu: np.ndarray | None = None

    def degrade(self, slab, rng) -> Degraded:
        if "labels" not in slab:  # (the target CT is not needed: translate has none)
            raise ValueError(f"task {self.name!r} needs a 'labels' array in the slab (has {sorted(slab)})")
        return Degraded(one_hot(slab["labels"], self.in_channels))

    def fit_baseline(self, train_slabs) -> None:
        n = self.in_channels
        sums, counts = np.zeros(n), np.zeros(n)
        for s in train_slabs:
            lab = np.asarray(s["labels"]).ravel().astype(np.int64)
            hu = unit_to_ct(np.asarray(s["ct"], np.float64)).ravel()
            sums += np.bincount(lab, weights=hu, minlength=n)[:n]
            counts += np.bincount(lab, minlength=n)[:n]
        self.lut_hu = np.where(counts > 0, sums / np.maximum(counts, 1), -1000.0)

    def baseline(self, deg: Degraded, slab) -> np.ndarray | None:
        if self.lut_hu is None:
            return None
        return ct_to_unit(self.lut_hu[np.argmax(deg.image, axis=0)])
