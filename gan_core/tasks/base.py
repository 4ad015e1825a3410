"""The task base class and the shape of a degraded input.

Arrays follow the shard layout: a slab is a dict of ``(Z, H, W)`` arrays (``mr``/``ct`` float32
in [-1, 1], ``mask``/``labels`` uint8). A network input is ``(C, Z, H, W)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gan_core.data.normalize import CT_MAX, CT_MIN, ct_to_unit, mr_to_unit, unit_to_ct

if TYPE_CHECKING:
    from gan_core.config import TaskConfig


#: CT value written outside the body mask (air).
AIR_HU = -1000.0


@dataclass
class Degraded:
    """A network input ``image`` ``(C, Z, H, W)`` plus what inference needs to post-process it
    (``aux``: e.g. the k-space sampling mask and the measured k-space)."""

    image: np.ndarray
    aux: dict[str, np.ndarray] = field(default_factory=dict)


class Task:
    """Base task: identity degradation of ``source`` into ``target`` (override what differs).

    Class attributes:
      ``source``/``target``: slab arrays the input is made from / the network must produce;
      ``in_channels``: channels of ``A`` (0: unconditional synthesis, no input);
      ``per_sample``: ``True`` when ``degrade`` draws fresh randomness per training sample
      (k-space masks); otherwise it is computed once per subject and cached;
      ``needs``: slab arrays ``degrade`` reads (``"labels"`` must be packed in the shards).
    """  # noqa: D205

    name: str = "base"
    source: str = "mr"
    target: str = "ct"
    in_channels: int = 1
    per_sample: bool = False
    needs: tuple[str, ...] = ()
    #: ``LossWeights`` fields the task relies on (searched by Ray Tune beside the framework's)
    loss_terms: tuple[str, ...] = ()
    #: loss weights the task's presets set (e.g. k-space: a frequency term)
    loss_defaults: dict[str, float] = {}
    #: model choices the task's presets set (same-modality tasks: a residual generator)
    model_defaults: dict[str, object] = {}

    def __init__(self, cfg: "TaskConfig") -> None:
        self.cfg = cfg

    # -- what a task defines -----------------------------------------------------------------
    def degrade(self, slab: dict[str, np.ndarray], rng: np.random.Generator) -> Degraded:
        """Network input from a slab (any depth, including one slice)."""
        return Degraded(np.asarray(slab[self.source], np.float32)[None])

    def postprocess(self, pred: np.ndarray, deg: Degraded) -> np.ndarray:
        """Inference-time correction of a ``(Z, H, W)`` prediction in [-1, 1] (default: none)."""
        return pred

    def fit_baseline(self, train_slabs) -> None:
        """Fit the non-learned baseline on an iterable of training slabs (default: nothing)."""

    def baseline(self, deg: Degraded, slab: dict[str, np.ndarray]) -> np.ndarray | None:
        """Non-learned prediction ``(Z, H, W)`` in [-1, 1], or None when the task has none."""
        return None

    def metrics(self, pred: np.ndarray, slab: dict[str, np.ndarray]) -> dict[str, float]:
        """Scores of a ``(Z, H, W)`` prediction in [-1, 1] against ``slab[target]``.

        CT targets: SynthRAD MAE / PSNR / SSIM in HU inside the body mask. MR targets: fastMRI
        NMSE / PSNR / SSIM on the [0, 1] magnitude (``gan_core.metrics``).
        """
        from gan_core import metrics as M

        gt = np.asarray(slab[self.target], np.float32)
        mask = np.asarray(slab["mask"]) > 0
        if self.target == "ct":
            return M.score(unit_to_ct(gt), unit_to_ct(np.asarray(pred, np.float32)), mask)
        return M.fastmri_scores(to_magnitude(gt), to_magnitude(pred))

    # -- raw volumes (``medgan translate``) --------------------------------------------------
    def input_mask(self, volume: np.ndarray) -> np.ndarray:
        """uint8 body mask of a raw ``source`` volume when no mask file is given (labels: > 0)."""
        from gan_core.data.masks import body_mask

        return body_mask(volume, threshold=0.0 if self.source == "labels" else None)

    def normalize_input(self, volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A raw ``source`` volume -> the network's unit space, exactly as the shards hold it:
        MR by robust percentiles inside ``mask`` (outside: -1), CT from HU, labels as uint8."""
        if self.source == "mr":
            return mr_to_unit(volume, mask)
        if self.source == "ct":
            return ct_to_unit(volume)
        if self.source == "labels":
            lab = np.asarray(volume)
            if lab.size and (lab.min() < 0 or lab.max() > 255 or not np.all(lab == np.round(lab))):
                raise ValueError(f"task {self.name!r}: expected integer labels 0..255 as input")
            return lab.astype(np.uint8)
        raise ValueError(f"task {self.name!r} takes no input volume (source {self.source!r}): "
                         "an unconditional model samples instead of translating")

    def to_target_units(self, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A prediction in [-1, 1] -> float32 in the target's units: HU for CT (``AIR_HU``
        outside ``mask``), the [0, 1] magnitude for MR (0 outside ``mask``)."""
        inside = np.asarray(mask) > 0
        if self.target == "ct":
            return np.where(inside, unit_to_ct(np.asarray(pred, np.float32)).astype(np.float32),
                            AIR_HU).astype(np.float32)
        return np.where(inside, np.clip(to_magnitude(pred), 0.0, 1.0), 0.0).astype(np.float32)

    # -- shared ------------------------------------------------------------------------------
    @property
    def target_scale(self) -> float:
        """Units of the target per unit of [-1, 1] (HU for CT, the [0, 1] magnitude for MR)."""
        return (CT_MAX - CT_MIN) / 2.0 if self.target == "ct" else 0.5

    @property
    def target_unit(self) -> str:
        return "HU" if self.target == "ct" else "[0,1]"

    def check_slab(self, slab: dict[str, Any], where: str) -> None:
        missing = [k for k in (self.source, self.target, *self.needs) if k and k not in slab]
        if missing:
            raise ValueError(f"task {self.name!r} needs arrays {missing} in {where} "
                             f"(has {sorted(slab)}); labels are packed only when every subject has "
                             "a labels.nii.gz")


def to_magnitude(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1] (MR magnitude, background 0), as k-space and fastMRI metrics expect."""
    return (np.asarray(x, np.float32) + 1.0) * 0.5


def from_magnitude(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32) * 2.0 - 1.0).astype(np.float32)
