"""MR -> synthetic CT (the product's main task); baseline: the intensity regression."""

from __future__ import annotations

import numpy as np

from gan_core.baseline import IntensityRegressionBaseline
from gan_core.data.normalize import ct_to_unit, unit_to_ct
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task


@register("mr2ct")
class MRToCT(Task):
    source, target = "mr", "ct"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.regression = IntensityRegressionBaseline()

    def fit_baseline(self, train_slabs) -> None:
        self.regression.fit((s[self.source], unit_to_ct(s[self.target]), s["mask"]) for s in train_slabs)

    def baseline(self, deg: Degraded, slab) -> np.ndarray | None:
        if not self.regression.fitted:
            return None
        return ct_to_unit(self.regression.predict(deg.image[0], slab["mask"]))
