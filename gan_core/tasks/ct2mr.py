"""CT -> synthetic MR (the reverse direction); baseline: a binned CT -> MR intensity regression.

The regression is the same estimator as MR -> CT's, fitted the other way round (CT in [-1, 1] to
MR in [-1, 1]); its "HU" output is simply the MR unit value.
"""

from __future__ import annotations

import numpy as np

from gan_core.eval.baseline import IntensityRegressionBaseline
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task


@register("ct2mr")
class CTToMR(Task):
    source, target = "ct", "mr"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.regression = IntensityRegressionBaseline(background_hu=-1.0)

    def fit_baseline(self, train_slabs) -> None:
        self.regression.fit((s[self.source], s[self.target], s["mask"]) for s in train_slabs)

    def baseline(self, deg: Degraded, slab) -> np.ndarray | None:
        if not self.regression.fitted:
            return None
        return np.clip(self.regression.predict(deg.image[0], slab["mask"]), -1, 1).astype(np.float32)
