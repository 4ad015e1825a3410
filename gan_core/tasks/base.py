"""The task base class and the shape of a degraded input.

Arrays follow the shard layout: a slab is a dict of ``(Z, H, W)`` arrays (``mr``/``ct`` float32
in [-1, 1], ``mask``/``labels`` uint8). A network input is ``(C, Z, H, W)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from gan_core.config import TaskConfig
from gan_core.data.normalize import CT_MAX, CT_MIN, ct_to_unit, mr_to_unit, unit_to_ct


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
      ``needs``: slab arrays ``degrade`` reads (``"labels"`` must be packed in the shards);
      ``Params``: the task's parameters, the config's ``task`` section (a :class:`TaskConfig`);
      ``search_space``: Ray Tune ranges the task adds to the framework's, by dotted config key.
    """  # noqa: D205

    name: str = "base"
    source: str = "mr"
    target: str = "ct"
    in_channels: int = 1
    per_sample: bool = False
    needs: tuple[str, ...] = ()
    Params: ClassVar[type[TaskConfig]] = TaskConfig
    #: True when a scanner acquires the network input as such (a low-dose CT; a thick-slice MR
    #: resampled to the thin grid): ``translate(..., degraded_input=True)`` then feeds a real
    #: input as it is instead of simulating the degradation on it (a retrospective study)
    acquired_input: bool = False
    #: loss weights the task's presets set (e.g. k-space: a frequency term)
    loss_defaults: ClassVar[dict[str, float]] = {}
    #: model choices the task's presets set (same-modality tasks: a residual generator)
    model_defaults: ClassVar[dict[str, object]] = {}
    #: ``{"loss.frequency": ("loguniform", 1.0, 100.0)}``: searched by Ray Tune beside the
    #: framework's own ranges
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = {}

    def __init__(self, cfg: TaskConfig) -> None:
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
        NMSE / PSNR / SSIM on the [0, 1] magnitude (``gan_core.eval.metrics``).
        """
        from gan_core.eval import metrics as M

        gt = np.asarray(slab[self.target], np.float32)
        mask = np.asarray(slab["mask"]) > 0
        if self.target == "ct":
            return M.score(unit_to_ct(gt), unit_to_ct(np.asarray(pred, np.float32)), mask)
        return M.fastmri_scores(to_magnitude(gt), to_magnitude(pred))

    # -- what the evaluation asks of a task (gan_core.eval.evaluate) -------------------------
    #: names under which metrics are tracked (e.g. MLflow), where they differ from the keys
    metric_aliases: dict[str, str] = {}

    @property
    def postprocesses(self) -> bool:
        """True when :meth:`postprocess` does something (the raw output is scored too)."""
        return type(self).postprocess is not Task.postprocess

    def subject_fields(self, slab: dict[str, np.ndarray]) -> dict[str, Any]:
        """Extra per-subject fields of an evaluation report (default: none)."""
        return {}

    def fit_audit(self, train_cases) -> None:
        """Calibrate :meth:`audit` on ``(slab, spacing)`` pairs of the training split, after
        :meth:`fit_baseline` (default: nothing; MR -> CT learns the lesion audit's tissue-border
        margin from the baseline's errors)."""

    def audit(self, pred: np.ndarray, slab: dict[str, np.ndarray],
              spacing: tuple[float, float, float] | None) -> dict[str, Any] | None:
        """A per-subject audit of a prediction beyond the metrics (``spacing``: mm per slab
        axis), or None when the task has none (default)."""
        return None

    def audit_summary(self, report: dict[str, Any], method: str) -> dict[str, Any] | None:
        """The cohort verdict of :meth:`audit` for ``method`` in a report (``passed``, ``reason``
        and counts), or None when the task has no audit (default)."""
        return None

    def figure_panels(self, image: np.ndarray, slab: dict[str, np.ndarray],
                      preds: dict[str, np.ndarray], z: int) -> list[tuple[str, np.ndarray, dict]]:
        """One figure row at slice ``z``: ``(title, 2D image, imshow keywords)`` per panel.

        Default: input | target | each method | |error| of each, all in [-1, 1].
        """
        target = np.asarray(slab[self.target], np.float32)
        if image.shape[0] > 1:  # one-hot labels: show the label index
            shown = np.argmax(image[:, z], 0) / (image.shape[0] - 1) * 2 - 1
        else:
            shown = image[0, z] if image.shape[0] == 1 else np.full_like(target[z], -1.0)
        gray, err = dict(cmap="gray", vmin=-1, vmax=1), dict(cmap="magma", vmin=0, vmax=0.5)
        return ([("input", shown, gray), (f"target ({self.target})", target[z], gray)]
                + [(name, p[z], gray) for name, p in preds.items()]
                + [(f"|err| {name}", np.abs(p[z] - target[z]), err) for name, p in preds.items()])

    def cohort_report(self, models: dict[str, Any], test_shards, out_dir, *, train_shards=None,
                      seed: int = 0, device: str = "cpu") -> dict[str, Any] | None:
        """A report computed over the whole cohort instead of per subject (unconditional
        synthesis: the Fréchet distance), or None to be scored per subject (default)."""
        return None

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
