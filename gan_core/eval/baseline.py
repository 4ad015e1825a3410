"""Non-learned MR -> HU baseline: a binned intensity regression fitted on the training split.

Any GAN should beat this. The normalised MR value of a body voxel (``[-1, 1]``, from
:func:`gan_core.data.normalize.mr_to_unit`) is binned into ``n_bins`` equal bins; the fitted table
holds the mean (or median) HU of the training voxels in each bin. Empty bins take the value
linearly interpolated from the nearest filled bins (the end bins copy their nearest neighbour).
Prediction interpolates linearly between bin centres (``np.interp``, constant beyond the end
centres) inside the body mask and writes ``background_hu`` (-1000) outside it.

Fitting streams over ``(mr_unit, ct_hu, mask)`` triples holding only per-bin accumulators:
sums and counts for ``"mean"``; for ``"median"`` a per-bin histogram of HU at 1 HU resolution
over [-1024, 3000] (``n_bins x 4025`` int64, 4 MB for 128 bins), so the median is exact to
1 HU. Training HU are clipped to [CT_MIN, CT_MAX] as everywhere else in the project.

>>> import numpy as np
>>> mr = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
>>> ct = 500.0 * mr; body = np.ones(mr.shape, bool)
>>> model = IntensityRegressionBaseline(n_bins=64).fit([(mr, ct, body)])
>>> bool(np.abs(model.predict(mr, body) - ct).max() < 10.0)
True
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gan_core.data.normalize import CT_MAX, CT_MIN

FORMAT = "medgan.intensity_regression_baseline"
VERSION = 1
STATISTICS = ("mean", "median")
_MR_TOLERANCE = 1e-3  # normalised MR may overshoot [-1, 1] by float rounding only
_HU_BINS = int(CT_MAX - CT_MIN) + 1  # 1 HU histogram bins for the median

__all__ = ["IntensityRegressionBaseline"]


class IntensityRegressionBaseline:
    """Binned regression normalised MR -> HU.

    Args:
        n_bins: number of equal bins over [-1, 1] (>= 2).
        statistic: ``"mean"`` or ``"median"`` HU per bin.
        background_hu: prediction outside the body mask.

    >>> IntensityRegressionBaseline().fitted
    False
    """

    def __init__(self, n_bins: int = 128, statistic: str = "mean", background_hu: float = -1000.0):
        if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 2:
            raise ValueError(f"IntensityRegressionBaseline: n_bins must be an integer >= 2, got {n_bins!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"IntensityRegressionBaseline: statistic must be one of {STATISTICS}, "
                             f"got {statistic!r}")
        if not np.isfinite(background_hu):
            raise ValueError("IntensityRegressionBaseline: background_hu must be finite, "
                             f"got {background_hu!r}")
        self.n_bins = int(n_bins)
        self.statistic = statistic
        self.background_hu = float(background_hu)
        self.lut_hu: np.ndarray | None = None  # fitted HU per bin, float64, length n_bins
        self.counts: np.ndarray | None = None  # training voxels per bin, int64
        self.n_subjects = 0

    # ------------------------------------------------------------------ helpers
    @property
    def fitted(self) -> bool:
        """True once :meth:`fit` or :meth:`from_dict` has set the table."""
        return self.lut_hu is not None

    @property
    def bin_centres(self) -> np.ndarray:
        """Centres of the ``n_bins`` equal bins over [-1, 1]."""
        edges = np.linspace(-1.0, 1.0, self.n_bins + 1)
        return 0.5 * (edges[:-1] + edges[1:])

    def _bin_index(self, mr_unit: np.ndarray) -> np.ndarray:
        idx = np.floor((np.clip(mr_unit, -1.0, 1.0) + 1.0) * 0.5 * self.n_bins).astype(np.int64)
        return np.clip(idx, 0, self.n_bins - 1)

    @staticmethod
    def _check_mr(mr: np.ndarray, where: str) -> None:
        if mr.size == 0:
            return
        if not np.all(np.isfinite(mr)):
            raise ValueError(f"{where}: normalised MR holds non-finite values")
        lo, hi = float(mr.min()), float(mr.max())
        if lo < -1.0 - _MR_TOLERANCE or hi > 1.0 + _MR_TOLERANCE:
            raise ValueError(f"{where}: expected normalised MR in [-1, 1] "
                             f"(gan_core.data.normalize.mr_to_unit), got range [{lo:g}, {hi:g}]")

    # ------------------------------------------------------------------ fit / predict
    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> IntensityRegressionBaseline:
        """Fit from ``(mr_unit, ct_hu, body_mask)`` triples, streamed one at a time.

        Replaces any previous fit. Raises ValueError on mismatched shapes, MR outside [-1, 1],
        non-finite values, or when the masks hold no voxel at all.
        """
        sums = np.zeros(self.n_bins, dtype=np.float64)
        counts = np.zeros(self.n_bins, dtype=np.int64)
        hist = np.zeros((self.n_bins, _HU_BINS), dtype=np.int64) if self.statistic == "median" else None
        n_subjects = 0
        for i, item in enumerate(pairs):
            where = f"IntensityRegressionBaseline.fit: pair {i}"
            try:
                mr, ct, mask = item
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected a (mr_unit, ct_hu, mask) triple") from None
            mr = np.asarray(mr, dtype=np.float32)
            ct = np.asarray(ct, dtype=np.float32)
            mask = np.asarray(mask)
            if not (mr.shape == ct.shape == mask.shape):
                raise ValueError(f"{where}: shapes differ: mr {mr.shape}, ct {ct.shape}, mask {mask.shape}")
            inside = mask > 0
            mr_in, ct_in = mr[inside], ct[inside]
            self._check_mr(mr_in, where)
            if not np.all(np.isfinite(ct_in)):
                raise ValueError(f"{where}: CT holds non-finite values inside the mask")
            ct_in = np.clip(ct_in.astype(np.float64), CT_MIN, CT_MAX)
            idx = self._bin_index(mr_in)
            sums += np.bincount(idx, weights=ct_in, minlength=self.n_bins)
            counts += np.bincount(idx, minlength=self.n_bins)
            if hist is not None:
                hu_idx = np.rint(ct_in - CT_MIN).astype(np.int64)
                hist += np.bincount(idx * _HU_BINS + hu_idx,
                                    minlength=self.n_bins * _HU_BINS).reshape(self.n_bins, _HU_BINS)
            n_subjects += 1
        filled = counts > 0
        if not filled.any():
            raise ValueError(f"IntensityRegressionBaseline.fit: no voxel inside any body mask "
                             f"({n_subjects} pairs seen); nothing to fit")
        values = np.zeros(self.n_bins, dtype=np.float64)
        if hist is None:
            values[filled] = sums[filled] / counts[filled]
        else:
            cdf = np.cumsum(hist[filled], axis=1)
            half = (counts[filled] + 1) // 2  # lower median, exact to 1 HU
            values[filled] = np.argmax(cdf >= half[:, None], axis=1) + CT_MIN
        centres = self.bin_centres
        self.lut_hu = np.interp(centres, centres[filled], values[filled])
        self.counts = counts
        self.n_subjects = n_subjects
        return self

    def predict(self, mr_unit: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """HU volume (float32): the fitted table inside ``mask``, ``background_hu`` outside.

        ``mask=None`` treats every voxel as body.
        """
        if self.lut_hu is None:
            raise RuntimeError("IntensityRegressionBaseline.predict called before fit() or load()")
        mr = np.asarray(mr_unit, dtype=np.float32)
        inside = np.ones(mr.shape, bool) if mask is None else np.asarray(mask) > 0
        if inside.shape != mr.shape:
            raise ValueError(f"IntensityRegressionBaseline.predict: mask shape {inside.shape} "
                             f"!= MR shape {mr.shape}")
        self._check_mr(mr[inside], "IntensityRegressionBaseline.predict")
        out = np.full(mr.shape, self.background_hu, dtype=np.float32)
        out[inside] = np.interp(mr[inside], self.bin_centres, self.lut_hu)
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fitted model."""
        if self.lut_hu is None or self.counts is None:
            raise RuntimeError("IntensityRegressionBaseline.to_dict called before fit() or load()")
        return {
            "format": FORMAT, "version": VERSION, "n_bins": self.n_bins,
            "statistic": self.statistic, "background_hu": self.background_hu,
            "n_subjects": self.n_subjects,
            "lut_hu": [float(v) for v in self.lut_hu],
            "counts": [int(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> IntensityRegressionBaseline:
        """Rebuild from :meth:`to_dict` output; errors name ``source`` and the bad field."""
        def bad(field: str, expected: str) -> ValueError:
            got = data.get(field, "<missing>") if isinstance(data, Mapping) else data
            text = repr(got)
            return ValueError(f"{source}: field {field!r} is {text[:80]}, expected {expected}")

        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise bad("format", repr(FORMAT))
        if data.get("version") != VERSION:
            raise bad("version", str(VERSION))
        n_bins = data.get("n_bins")
        if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 2:
            raise bad("n_bins", "an integer >= 2")
        if data.get("statistic") not in STATISTICS:
            raise bad("statistic", f"one of {STATISTICS}")
        bg = data.get("background_hu")
        if isinstance(bg, bool) or not isinstance(bg, (int, float)) or not np.isfinite(bg):
            raise bad("background_hu", "a finite number")
        n_subjects = data.get("n_subjects", 0)
        if not isinstance(n_subjects, int) or isinstance(n_subjects, bool) or n_subjects < 0:
            raise bad("n_subjects", "an integer >= 0")
        lut = data.get("lut_hu")
        if (not isinstance(lut, list) or len(lut) != n_bins
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                           for v in lut)):
            raise bad("lut_hu", f"a list of {n_bins} finite numbers")
        counts = data.get("counts")
        if (not isinstance(counts, list) or len(counts) != n_bins
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
            raise bad("counts", f"a list of {n_bins} integers >= 0")
        model = cls(n_bins=n_bins, statistic=data["statistic"], background_hu=float(bg))
        model.lut_hu = np.asarray(lut, dtype=np.float64)
        model.counts = np.asarray(counts, dtype=np.int64)
        model.n_subjects = n_subjects
        return model

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (temp file in the same folder, then rename). Returns the path."""
        path = Path(path)
        payload = json.dumps(self.to_dict(), indent=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IntensityRegressionBaseline:
        """Read a JSON written by :meth:`save`; malformed files raise ValueError naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(path))
