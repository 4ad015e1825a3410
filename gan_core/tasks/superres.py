"""MR through-plane super-resolution: a thick-slice acquisition, interpolated -> the thin slices.

Degradation (:func:`decimate` then :func:`cubic_upsample`): every ``task.factor``-th axial slice
is kept (slices ``0, f, 2f, ...``: a thin-slice acquisition with gaps; the kept slices stay
identical to the original), then a cubic spline along z (``scipy.interpolate.CubicSpline``,
not-a-knot ends, through the kept slices at their true positions) brings the volume back to the
original depth. The few slices past the last kept one (fewer than ``factor``) repeat it:
extrapolating the end cubic through anatomy that ends there overshoots (on the test phantom it
tripled that slice's error).
The result, clipped to [-1, 1], is the network input ``A``; the target is the original MR, so the
network learns the through-plane detail each axial slice lacks. With ``thick = True`` (class
attribute) each kept slice is instead the mean of the ``factor`` slices it covers, placed at their
centre (a thick slice, through-plane partial volume). Deterministic per subject.

Between the first and last kept slice the spline reproduces polynomials up to cubic in z exactly
(from four kept slices on; two kept slices give the line through them, three the parabola; one
slice is repeated).

Baseline: the cubic interpolation itself (the input). Metrics: fastMRI NMSE / PSNR / SSIM on the
[0, 1] magnitude (the base class).

>>> import numpy as np
>>> v = np.linspace(-1, 1, 9, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
>>> bool(np.allclose(cubic_upsample(*decimate(v, 2), depth=9), v, atol=1e-6))
True
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from gan_core.config import TaskConfig
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task

__all__ = ["check_factor", "decimate", "cubic_upsample", "SuperResolution"]


def check_factor(factor) -> int:
    """``task.factor`` as an int >= 2, or a ``ValueError`` naming it."""
    if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
            or not float(factor).is_integer() or factor < 2):
        raise ValueError(f"task.factor: expected an integer >= 2 (through-plane downsampling: "
                         f"keep every factor-th slice), got {factor!r}")
    return int(factor)


def decimate(volume: np.ndarray, factor: int, *, thick: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """The low-resolution slices of a ``(Z, H, W)`` volume and their z positions (in slices).

    Thin (default): slices ``0, factor, 2 factor, ...`` at those positions. Thick: the mean of each
    full run of ``factor`` slices at the run's centre (a trailing partial run is dropped).
    """
    factor = check_factor(factor)
    v = np.asarray(volume)
    if v.ndim != 3 or v.shape[0] < 1:
        raise ValueError(f"superres: expected a (Z, H, W) volume with Z >= 1, got {v.shape}")
    if not thick:
        return v[::factor], np.arange(0, v.shape[0], factor, dtype=np.float64)
    n = v.shape[0] // factor
    if n == 0:  # thinner than one thick slice: the whole slab is one
        return v.mean(0, keepdims=True), np.array([(v.shape[0] - 1) / 2.0])
    runs = v[:n * factor].reshape(n, factor, *v.shape[1:]).mean(1)
    return runs, np.arange(n) * factor + (factor - 1) / 2.0


def cubic_upsample(slices: np.ndarray, positions: np.ndarray, depth: int) -> np.ndarray:
    """Cubic spline through ``slices`` ``(n, H, W)`` at increasing z ``positions``, sampled at
    ``0..depth-1`` (float32, unclipped); outside the positions the end slice is held. One slice
    is repeated; two give a line, three a parabola."""
    s = np.asarray(slices, np.float64)
    pos = np.asarray(positions, np.float64)
    if s.ndim != 3 or pos.shape != (s.shape[0],) or s.shape[0] < 1:
        raise ValueError(f"cubic_upsample: expected (n, H, W) slices with n positions, got "
                         f"{s.shape} and {pos.shape}")
    if s.shape[0] == 1:
        return np.repeat(s, depth, axis=0).astype(np.float32)
    z = np.clip(np.arange(depth, dtype=np.float64), pos[0], pos[-1])  # hold the end slices
    return CubicSpline(pos, s, axis=0, bc_type="not-a-knot")(z).astype(np.float32)


@register("superres")
class SuperResolution(Task):
    """Cubic-interpolated thick-slice MR -> the original thin-slice MR (module docstring)."""

    @dataclass
    class Params(TaskConfig):
        """``task.*`` of through-plane super-resolution."""

        name: str = "superres"
        factor: int = 2         # through-plane downsampling factor

    source, target = "mr", "mr"
    acquired_input = True  # a thick-slice MR already resampled to the thin grid is translated as is
    # no residual generator here (unlike low-dose CT and k-space): on the phantom benchmark a
    # residual pix2pix stayed at the cubic input (NMSE 0.1025 = baseline), a plain one reached
    # 0.0958 (docs/results.md)
    thick: bool = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.factor = check_factor(cfg.factor)

    def degrade(self, slab, rng) -> Degraded:
        v = np.asarray(slab[self.source], np.float32)
        low, pos = decimate(v, self.factor, thick=self.thick)
        up = cubic_upsample(low, pos, v.shape[0])
        return Degraded(np.clip(up, -1.0, 1.0)[None])

    def baseline(self, deg: Degraded, slab) -> np.ndarray:
        return np.array(deg.image[0], np.float32)
