"""Intensity normalisation, the one source of truth for both modalities.

CT: Hounsfield units clipped to ``[CT_MIN, CT_MAX]`` and mapped linearly to ``[-1, 1]``.
MR: robust percentiles computed inside the body mask, mapped to ``[-1, 1]`` (then clipped).

>>> import numpy as np
>>> float(ct_to_unit(np.array(-1024.0)))
-1.0
>>> float(unit_to_ct(np.array(1.0)))
3000.0
"""

from __future__ import annotations

import numpy as np

CT_MIN = -1024.0
CT_MAX = 3000.0
MR_PERCENTILES = (0.5, 99.5)


def ct_to_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> [-1, 1] after clipping to [CT_MIN, CT_MAX]."""
    hu = np.clip(np.asarray(hu, dtype=np.float32), CT_MIN, CT_MAX)
    return (2.0 * (hu - CT_MIN) / (CT_MAX - CT_MIN) - 1.0).astype(np.float32)


def unit_to_ct(x):
    """[-1, 1] -> HU. Works on numpy arrays and torch tensors."""
    return (x + 1.0) * 0.5 * (CT_MAX - CT_MIN) + CT_MIN


def mr_percentiles(mr: np.ndarray, mask: np.ndarray | None = None,
                   percentiles: tuple[float, float] = MR_PERCENTILES) -> tuple[float, float]:
    """Robust (low, high) intensity of an MR volume inside ``mask`` (all voxels if None)."""
    mr = np.asarray(mr, dtype=np.float32)
    values = mr[np.asarray(mask) > 0] if mask is not None else mr.ravel()
    if values.size == 0:
        raise ValueError("MR normalisation: the body mask is empty, expected at least one voxel > 0")
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def mr_to_unit(mr: np.ndarray, mask: np.ndarray | None = None,
               percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """MR -> [-1, 1] by robust percentiles inside the body mask; voxels outside the mask -> -1."""
    lo, hi = mr_percentiles(mr, mask, percentiles)
    out = np.clip(2.0 * (np.asarray(mr, dtype=np.float32) - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    if mask is not None:
        out = np.where(np.asarray(mask) > 0, out, -1.0)
    return out.astype(np.float32)
