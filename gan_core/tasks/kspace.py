"""Undersampled single-coil MRI reconstruction: zero-filled image -> fully sampled image.

The MR slab is read as a real magnitude image ``x = (mr + 1) / 2`` in [0, 1]. Each axial slice is
taken to k-space with the orthonormal centred 2D FFT, phase-encode columns (the last axis) are kept
by a fastMRI-style mask (:func:`kspace_mask`), and the network input ``A`` is the zero-filled
reconstruction ``|IFFT(mask * K)|`` (clipped to [0, 1], back to [-1, 1]). One mask is drawn per
``degrade`` call, shared by all slices of the slab as in fastMRI; training draws a fresh one per
sample (``per_sample``). ``aux`` keeps the mask ``(W,)`` and the measured k-space ``(Z, H, W)``.

Inference post-processing is hard data consistency (:func:`data_consistency`): the prediction's
k-space is replaced by the measured data wherever it was measured. The simulated object is a real
image, so its k-space is Hermitian (``K(-k) = conj(K(k))``) and a measured column also fixes its
mirror column; both are replaced and the real part is kept. That is the orthogonal projection onto
the real images consistent with the measurements: exact on the sampled frequencies, idempotent,
and never farther from the truth than the raw prediction. (With complex raw data one would replace
only the measured columns and take the magnitude.) The result is then clipped to [0, 1], another
projection onto a convex set holding the truth, so post-processing never increases the error.

Baseline: the zero-filled reconstruction itself. Metrics: fastMRI NMSE / PSNR / SSIM on the
magnitude (the base class).

>>> import numpy as np
>>> m = kspace_mask(320, 4, 0.08, "equispaced", np.random.default_rng(0))
>>> bool(m[147:173].all()), abs(int(m.sum()) - 80) <= 2   # 26 centre columns; ~320 / 4 in all
(True, True)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from gan_core.config import TaskConfig
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task, from_magnitude, to_magnitude

MASK_KINDS = ("random", "equispaced")
_AXES = (-2, -1)

__all__ = ["MASK_KINDS", "kspace_mask", "check_mask_params", "fft2c", "ifft2c",
           "data_consistency", "KSpaceReconstruction"]


def check_mask_params(acceleration, center_fraction, kind) -> None:
    """Raise ``ValueError`` naming the ``task.*`` field unless the mask parameters are usable."""
    if (isinstance(acceleration, bool) or not isinstance(acceleration, numbers.Real)
            or not float(acceleration).is_integer() or acceleration < 1):
        raise ValueError(f"task.acceleration: expected an integer >= 1 (fastMRI: 4 or 8), "
                         f"got {acceleration!r}")
    if (isinstance(center_fraction, bool) or not isinstance(center_fraction, numbers.Real)
            or not 0.0 < center_fraction < 1.0):
        raise ValueError(f"task.center_fraction: expected a fraction in (0, 1) (fastMRI: 0.08 at "
                         f"4x, 0.04 at 8x), got {center_fraction!r}")
    if kind not in MASK_KINDS:
        raise ValueError(f"task.mask: expected one of {' | '.join(MASK_KINDS)}, got {kind!r}")


def kspace_mask(width: int, acceleration: int, center_fraction: float, kind: str,
                rng: np.random.Generator) -> np.ndarray:
    """Boolean column mask ``(width,)`` with fastMRI's ``RandomMaskFunc`` / ``EquispacedMaskFunc``
    semantics (``fastmri/data/subsample.py``), drawn from ``rng``.

    ``n_low = round(width * center_fraction)`` centre columns starting at
    ``(width - n_low + 1) // 2`` (they hold the centred FFT's DC) are always sampled. *random*:
    every other column with probability ``(width / acceleration - n_low) / (width - n_low)``, so the
    expected total is ``width / acceleration``. *equispaced*: columns ``round(offset + i * a)`` for
    ``offset + i * a < width - 1`` with the spacing ``a = acceleration (width - n_low) /
    (width - n_low * acceleration)`` adjusted for the centre, a random ``offset`` in
    ``[0, round(a))``; the count is ``width / acceleration`` up to rounding and centre overlap.
    ``acceleration == 1`` samples every column. Raises ``ValueError`` when the centre alone exceeds
    ``width / acceleration`` columns (the acceleration cannot be met).
    """
    check_mask_params(acceleration, center_fraction, kind)
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"kspace_mask: width must be a positive integer, got {width!r}")
    width, acc = int(width), int(acceleration)
    if acc == 1:
        return np.ones(width, bool)
    n_low = int(round(width * center_fraction))
    if n_low * acc > width:
        raise ValueError(f"task.center_fraction {center_fraction} x task.acceleration {acc}: the "
                         f"{n_low} fully sampled centre columns of {width} already exceed "
                         f"{width}/{acc} = {width / acc:.3g}; lower one of them")
    mask = np.zeros(width, bool)
    if n_low * acc < width:  # otherwise the centre alone is exactly the budget
        if kind == "random":
            prob = (width / acc - n_low) / (width - n_low)
            mask = rng.uniform(size=width) < prob
        else:
            adjusted = acc * (n_low - width) / (n_low * acc - width)
            offset = int(rng.integers(0, round(adjusted)))
            mask[np.around(np.arange(offset, width - 1, adjusted)).astype(np.int64)] = True
    pad = (width - n_low + 1) // 2
    mask[pad:pad + n_low] = True
    return mask


def fft2c(x: np.ndarray) -> np.ndarray:
    """Orthonormal centred 2D FFT over the last two axes (k-space DC at index ``n // 2``)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=_AXES), axes=_AXES, norm="ortho"),
                           axes=_AXES)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fft2c`."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=_AXES), axes=_AXES, norm="ortho"),
                           axes=_AXES)


def _mirror(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``a`` at the negated centred frequency: ``out[k] = a[-k]`` along ``axes``."""
    u = np.fft.ifftshift(a, axes=axes)
    return np.fft.fftshift(np.roll(np.flip(u, axes), 1, axes), axes=axes)


def data_consistency(image: np.ndarray, mask: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Hard data consistency of a real image ``(..., H, W)`` (unclipped, float64).

    The image's k-space is replaced by ``measured`` on the sampled columns ``mask`` ``(W,)`` and by
    the Hermitian mirror ``conj(measured[-k])`` on their mirror columns; the real part of the
    inverse FFT is returned (see the module docstring: the projection onto real images that agree
    with the measurements).
    """
    mask = np.asarray(mask, bool)
    measured = np.asarray(measured)
    if mask.ndim != 1 or mask.shape[0] != measured.shape[-1]:
        raise ValueError(f"data_consistency: mask shape {mask.shape} does not match the k-space "
                         f"columns of {measured.shape}")
    if np.shape(image)[-2:] != measured.shape[-2:]:
        raise ValueError(f"data_consistency: image shape {np.shape(image)} does not match the "
                         f"measured k-space {measured.shape}")
    mirror_mask = _mirror(mask, (0,))
    known = np.where(mask, measured, np.conj(_mirror(measured, _AXES)))
    k = np.where(mask | mirror_mask, known, fft2c(np.asarray(image, np.float64)))
    return ifft2c(k).real


@register("kspace")
class KSpaceReconstruction(Task):
    """Zero-filled undersampled MR -> fully sampled MR (see the module docstring)."""

    @dataclass
    class Params(TaskConfig):
        """``task.*`` of k-space reconstruction (fastMRI mask functions)."""

        name: str = "kspace"
        acceleration: int = 4          # undersampling factor (fastMRI: 4 or 8)
        center_fraction: float = 0.08  # fully sampled centre (fastMRI: 0.08 at 4x, 0.04 at 8x)
        mask: str = "random"           # random | equispaced

    source, target = "mr", "mr"
    per_sample = True
    #: the generator is trained with the L11 frequency (k-space fidelity) term beside L1 and GAN;
    #: its weight is searched by Ray Tune like the framework's own terms
    loss_defaults = {"frequency": 10.0}
    search_space = {"loss.frequency": ("loguniform", 1.0, 100.0)}
    model_defaults = {"residual": True}  # learn the de-aliasing, not the image

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        check_mask_params(cfg.acceleration, cfg.center_fraction, cfg.mask)

    def degrade(self, slab, rng) -> Degraded:
        x = to_magnitude(slab[self.source]).astype(np.float64)
        if x.ndim != 3:
            raise ValueError(f"kspace: expected a (Z, H, W) MR slab, got shape {x.shape}")
        mask = kspace_mask(x.shape[-1], self.cfg.acceleration, self.cfg.center_fraction,
                           self.cfg.mask, rng)
        measured = fft2c(x) * mask
        zero_filled = np.clip(np.abs(ifft2c(measured)), 0.0, 1.0)
        return Degraded(from_magnitude(zero_filled)[None],
                        {"mask": mask, "kspace": measured.astype(np.complex64)})

    def postprocess(self, pred: np.ndarray, deg: Degraded) -> np.ndarray:
        x = data_consistency(to_magnitude(pred), deg.aux["mask"], deg.aux["kspace"])
        return from_magnitude(np.clip(x, 0.0, 1.0))

    def baseline(self, deg: Degraded, slab) -> np.ndarray:
        return np.array(deg.image[0], np.float32)
