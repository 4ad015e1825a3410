"""SynthRAD2023-exact image metrics (MAE, PSNR, SSIM in HU) and the lesion hallucination audit.

Image metrics
-------------
These reproduce ``ImageMetrics`` of the SynthRAD2023 evaluation code, repository
``SynthRAD2023/metrics``, file ``functions/image_metrics.py`` (read at commit
``fe7e3853133dfb13da42f13c461c3d25c0123582``), which the challenge used to rank submissions:

* ``score_patient`` loads the three images and casts them to float32 (``sitkFloat32``) before
  computing anything; :func:`score` and each metric here do the same cast, so results match
  bit for bit given the same arrays.
* MAE: mask binarised (``mask > 0`` -> 1.0, float64), ``sum(|gt*mask - pred*mask|) / mask.sum()``.
  No clipping: a prediction of 5000 HU is charged in full.
* PSNR (``use_population_range=True``): gt and pred clipped to ``DYNAMIC_RANGE`` = [-1024, 3000],
  then only the masked voxels are kept, then
  ``skimage.metrics.peak_signal_noise_ratio(gt_m, pred_m, data_range=4024)``.
  Identical inputs give ``inf`` (zero MSE); we keep ``inf`` as skimage and SynthRAD do (the
  numpy divide-by-zero warning is silenced), and :func:`aggregate` propagates it into the mean.
* SSIM: both clipped to the range, voxels outside the mask set to -1024, both shifted by +1024,
  ``structural_similarity(gt, pred, data_range=4024, full=True)`` on the whole 2D/3D array (7-voxel
  window, so every dimension must be >= 7), then the mean of the SSIM map cropped by 3 voxels on
  every side, over the equally cropped mask. Without a mask: skimage's own mean (which also crops 3).

Masks are binarised with ``mask > 0`` everywhere (a mask holding 0/2 behaves as 0/1).

The hallucination audit (:func:`lesion_audit`) is this project's own; its definition is in its
docstring.

>>> import numpy as np
>>> gt = np.zeros((8, 8, 8), np.float32); pred = gt + 10.0
>>> mae(gt, pred)
10.0
>>> round(psnr(gt, pred), 3)  # 10*log10(4024**2 / 10**2)
52.093
>>> ssim(gt, gt)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

DYNAMIC_RANGE: tuple[float, float] = (-1024.0, 3000.0)
SSIM_CROP = 3  # skimage's pad for the default 7-voxel window; SynthRAD crops the mask alike
METRIC_KEYS = ("mae", "psnr", "ssim")

__all__ = [
    "DYNAMIC_RANGE", "mae", "psnr", "ssim", "score", "aggregate", "lesion_audit",
    "learn_border_margin", "noise_floor_hu", "PARENCHYMA_LABELS", "DEFAULT_MARGIN_VOXELS",
]


# ----------------------------------------------------------------------------- validation
def _check(gt: Any, pred: Any, mask: Any | None, where: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Cast to float32 (as SynthRAD's loader does), check shapes/finiteness, binarise mask."""
    gt = np.asarray(gt, dtype=np.float32)
    pred = np.asarray(pred, dtype=np.float32)
    if gt.shape != pred.shape:
        raise ValueError(f"{where}: ground truth shape {gt.shape} != prediction shape {pred.shape}")
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise ValueError(f"{where}: {name} holds {bad} non-finite (NaN/inf) voxels")
    if mask is None:
        return gt, pred, None
    mask = np.asarray(mask)
    if mask.shape != gt.shape:
        raise ValueError(f"{where}: mask shape {mask.shape} != image shape {gt.shape}")
    binary = np.where(mask > 0, 1.0, 0.0)  # float64, exactly as SynthRAD binarises
    if binary.sum() == 0:
        raise ValueError(f"{where}: the mask is empty, expected at least one voxel > 0")
    return gt, pred, binary


# ----------------------------------------------------------------------------- metrics
def mae(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error in HU inside ``mask`` (all voxels if None); no clipping.

    >>> mae(np.array([0.0, 0.0, 9.0]), np.array([4.0, 0.0, 0.0]), mask=np.array([2, 0, 0]))
    4.0
    """
    gt, pred, m = _check(gt, pred, mask, "mae")
    if m is None:
        m = np.ones(gt.shape)
    return float(np.sum(np.abs(gt * m - pred * m)) / m.sum())


def psnr(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over masked voxels, both clipped to ``DYNAMIC_RANGE``, data range 4024.

    Returns ``inf`` when the clipped masked voxels are identical.

    >>> round(psnr(np.zeros(4), np.full(4, 5000.0)), 4)  # pred clipped to 3000: 20*log10(4024/3000)
    2.5507
    """
    gt, pred, m = _check(gt, pred, mask, "psnr")
    lo, hi = DYNAMIC_RANGE
    gt = np.clip(gt, lo, hi)
    pred = np.clip(pred, lo, hi)
    if m is not None:
        gt, pred = gt[m == 1], pred[m == 1]
    with np.errstate(divide="ignore"):
        value = peak_signal_noise_ratio(gt, pred, data_range=hi - lo)
    return float(value)


def ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM as SynthRAD2023: masked-out voxels at -1024, 7-voxel window, mask-restricted mean.

    >>> x = np.linspace(-1000, 1000, 8**3).reshape(8, 8, 8)
    >>> ssim(x, x, mask=np.ones_like(x))
    1.0
    """
    gt, pred, m = _check(gt, pred, mask, "ssim")
    if min(gt.shape, default=0) < 2 * SSIM_CROP + 1 or gt.ndim < 2:
        raise ValueError(f"ssim: every dimension must be >= {2 * SSIM_CROP + 1} "
                         f"(skimage's 7-voxel window) on a 2D/3D array, got shape {gt.shape}")
    lo, hi = DYNAMIC_RANGE
    gt = np.clip(gt, lo, hi)
    pred = np.clip(pred, lo, hi)
    if m is not None:
        gt = np.where(m == 0, lo, gt)
        pred = np.where(m == 0, lo, pred)
    gt = gt - lo
    pred = pred - lo
    full_mean, ssim_map = structural_similarity(gt, pred, data_range=hi - lo, full=True)
    if m is None:
        return float(full_mean)
    inner = crop(m, SSIM_CROP).astype(bool)
    if not inner.any():
        raise ValueError(f"ssim: the mask has no voxel farther than {SSIM_CROP} voxels from the "
                         f"array border (shape {m.shape}); SSIM over it is undefined")
    return float(crop(ssim_map, SSIM_CROP)[inner].mean(dtype=np.float64))


def score(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """All three SynthRAD2023 metrics for one subject: ``{"mae", "psnr", "ssim"}``.

    >>> v = np.zeros((7, 7, 7)); sorted(score(v, v + 1, v + 1))
    ['mae', 'psnr', 'ssim']
    """
    return {"mae": mae(gt, pred, mask), "psnr": psnr(gt, pred, mask), "ssim": ssim(gt, pred, mask)}


def aggregate(scores: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Cohort summary: ``{"n": n, key: {"mean", "sd", "median"}}`` for each metric key.

    ``sd`` is the sample standard deviation (ddof=1); 0.0 for a single subject. An ``inf``
    PSNR (a perfect subject) makes that metric's mean and sd ``inf``/``nan``; the median stays
    meaningful.

    >>> aggregate([{"mae": 1.0}, {"mae": 3.0}])["mae"]["mean"]
    2.0
    """
    if len(scores) == 0:
        raise ValueError("aggregate: expected at least one per-subject score dict, got none")
    keys = list(scores[0].keys())
    if not keys:
        raise ValueError("aggregate: score dict 0 has no metrics")
    out: dict[str, Any] = {"n": len(scores)}
    for key in keys:
        values = []
        for i, s in enumerate(scores):
            if key not in s:
                raise ValueError(f"aggregate: score dict {i} lacks metric {key!r} (has {sorted(s)})")
            try:
                values.append(float(s[key]))
            except (TypeError, ValueError):
                raise ValueError(f"aggregate: score dict {i} field {key!r} is {s[key]!r}, "
                                 f"expected a number") from None
        arr = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            sd = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
        out[key] = {"mean": float(np.mean(arr)), "sd": sd, "median": float(np.median(arr))}
    return out


# ----------------------------------------------------------------------------- lesion audit
#: Label ids of brain parenchyma (grey and white matter) in the phantom's tissue map
#: (``gan_core.data.phantom.TISSUES``): where lesions live and where invented ones are searched.
PARENCHYMA_LABELS: tuple[int, ...] = (6, 7)
#: Border margin (in voxels of the largest spacing) when none was learned from a baseline: the
#: margin ``bench/audit_calibration.py`` learned at the demo geometry (3 x 3 x 5 mm) was 5.8 mm.
DEFAULT_MARGIN_VOXELS = 1.2


def _ellipsoid(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element: the voxel ellipsoid of ``radius_mm`` (>= 1 voxel per axis)."""
    radii = [max(1, int(round(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grids, radii)) <= 1.0 + 1e-9


def _nsmooth(x: np.ndarray, support: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing by normalised convolution inside ``support`` (nothing outside leaks in)."""
    w = ndimage.gaussian_filter(support.astype(np.float32), sigma, mode="constant")
    s = ndimage.gaussian_filter(np.where(support, x, np.float32(0.0)).astype(np.float32), sigma,
                                mode="constant")
    return s / np.maximum(w, np.float32(1e-6))


def _kernel_norm(sigma: Sequence[float]) -> float:
    """``sqrt(sum k^2)`` of the discrete Gaussian kernel: white noise of sd 1, smoothed, has this sd."""
    size = [2 * int(np.ceil(4 * s)) + 1 for s in sigma]
    delta = np.zeros(size, np.float64)
    delta[tuple(n // 2 for n in size)] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(delta, sigma, mode="constant") ** 2).sum()))


def noise_floor_hu(image: np.ndarray, region: np.ndarray, spacing: Sequence[float]) -> float:
    """Robust per-voxel noise sd of ``image`` inside ``region``: 1.4826 x the median absolute
    deviation of neighbour differences along the finest axes (those of the smallest spacing),
    over pairs with both voxels in ``region``, divided by sqrt(2). Edges and slow trends barely
    move a median of differences; 0.0 when no pair lies in ``region``.

    >>> rng = np.random.default_rng(0); img = rng.normal(40, 12, (8, 40, 40))
    >>> round(noise_floor_hu(img, np.ones(img.shape, bool), (5.0, 3.0, 3.0)))
    12
    """
    finest = min(spacing)
    diffs = []
    for ax, s in enumerate(spacing):
        if s > finest * 1.001:
            continue
        a = [slice(None)] * image.ndim
        b = [slice(None)] * image.ndim
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        both = region[tuple(a)] & region[tuple(b)]
        diffs.append((image[tuple(a)] - image[tuple(b)])[both])
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def _region_maps(true: np.ndarray, body: np.ndarray, labels: np.ndarray | None,
                 spacing: tuple[float, ...], soft_tissue_hu: tuple[float, float]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(parenchyma, tissue class per voxel (0 outside), distance in mm to the nearest voxel of
    another class or outside the parenchyma)``."""
    if labels is not None:
        par = np.isin(np.asarray(labels), PARENCHYMA_LABELS) & body
        classes = np.where(par, np.asarray(labels).astype(np.int16) + 1, 0).astype(np.int16)
    else:  # no tissue map: water-like soft tissue of the (lightly smoothed) true CT, one class
        sm = ndimage.gaussian_filter(true, 0.7, mode="nearest")
        par = body & (sm >= soft_tissue_hu[0]) & (sm <= soft_tissue_hu[1])
        classes = par.astype(np.int16)
    dist = np.zeros(true.shape, np.float64)
    inner = tuple(slice(1, -1) for _ in par.shape)
    for c in np.unique(classes[par]):
        m = classes == c
        dist[m] = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)[inner][m]
    return par, classes, dist


def _deviation(true: np.ndarray, pred: np.ndarray, lesion: np.ndarray, body: np.ndarray,
               labels: np.ndarray | None, spacing: tuple[float, ...], p: dict[str, Any]
               ) -> dict[str, Any]:
    """The maps both the audit and :func:`learn_border_margin` use (definitions: lesion_audit)."""
    par, classes, dist = _region_maps(true, body, labels, spacing, p["soft_tissue_hu"])
    near_lesion = (ndimage.binary_dilation(lesion, structure=_ellipsoid(p["shell_mm"], spacing))
                   if lesion.any() else np.zeros_like(lesion))
    support = par & ~near_lesion
    interior = support & (dist > min(spacing) * 1.5)
    if not interior.any():
        interior = support
    noise_true = noise_floor_hu(true, interior, spacing)
    resid = (pred - true).astype(np.float32)
    noise_resid = noise_floor_hu(resid, interior, spacing)
    sig = [max(0.5 * p["lesion_radius_mm"] / s, 0.5) for s in spacing]
    sig_bg = [max(p["background_mm"] / s, 2.0 * g) for s, g in zip(spacing, sig)]
    noise = max(noise_true, noise_resid)
    threshold = max(p["detect_sigmas"] * noise * _kernel_norm(sig), p["min_contrast_hu"])
    focal = np.zeros(true.shape, np.float32)
    focal_true = np.zeros(true.shape, np.float32)
    for c in np.unique(classes[support]):  # each tissue on its own: a tissue's offset is no lesion
        sc = support & (classes == c)
        focal[sc] = (_nsmooth(resid, sc, sig) - _nsmooth(resid, sc, sig_bg))[sc]
        focal_true[sc] = (_nsmooth(true, sc, sig) - _nsmooth(true, sc, sig_bg))[sc]
    suspicious = support & (np.abs(focal) > threshold) & (np.abs(focal_true) < 0.5 * threshold)
    return {"parenchyma": par, "classes": classes, "dist": dist, "support": support,
            "noise_true": noise_true, "noise_resid": noise_resid, "threshold": threshold,
            "focal": focal, "suspicious": suspicious}


def _components(mask: np.ndarray, min_voxels: int) -> tuple[np.ndarray, list[int]]:
    lab, n = ndimage.label(mask)
    if n == 0:
        return lab, []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    return lab, [i for i in range(1, n + 1) if sizes[i] >= min_voxels]


_AUDIT_DEFAULTS: dict[str, Any] = {
    "lesion_radius_mm": 5.0, "background_mm": 15.0, "detect_sigmas": 5.0,
    "evaluable_sigmas": 3.0, "min_contrast_hu": 10.0, "keep_fraction": 0.5, "shell_mm": 6.0,
    "min_invented_voxels": 3, "soft_tissue_hu": (-50.0, 100.0),
}


def _audit_params(spacing: Any, ndim: int, overrides: Mapping[str, Any]
                  ) -> tuple[tuple[float, ...], dict[str, Any]]:
    unknown = sorted(set(overrides) - set(_AUDIT_DEFAULTS))
    if unknown:
        raise ValueError(f"lesion_audit: unknown parameter(s) {unknown}; known: {sorted(_AUDIT_DEFAULTS)}")
    p = {**_AUDIT_DEFAULTS, **overrides}
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise ValueError(f"lesion_audit: spacing must be {ndim} positive numbers (mm), got {spacing}")
    for name in ("lesion_radius_mm", "background_mm", "detect_sigmas", "evaluable_sigmas",
                 "min_contrast_hu", "keep_fraction", "shell_mm"):
        v = p[name]
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"lesion_audit: {name} must be a finite number > 0, got {v!r}")
    p["soft_tissue_hu"] = tuple(float(v) for v in p["soft_tissue_hu"])
    p["min_invented_voxels"] = int(p["min_invented_voxels"])
    return spacing, p


def _audit_inputs(ct_true_hu: Any, ct_pred_hu: Any, lesion_mask: Any, body_mask: Any,
                  labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    true, pred, body = _check(ct_true_hu, ct_pred_hu, body_mask, "lesion_audit")
    body_b = body.astype(bool)
    lesion = np.zeros(true.shape, bool)
    if lesion_mask is not None:
        lesion = np.asarray(lesion_mask)
        if lesion.shape != true.shape:
            raise ValueError(f"lesion_audit: lesion mask shape {lesion.shape} != image shape {true.shape}")
        lesion = (lesion > 0) & body_b
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != true.shape:
            raise ValueError(f"lesion_audit: labels shape {labels.shape} != image shape {true.shape}")
    return true, pred, lesion, body_b, labels


def lesion_audit(
    ct_true_hu: np.ndarray,
    ct_pred_hu: np.ndarray,
    lesion_mask: np.ndarray | None,
    body_mask: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    labels: np.ndarray | None = None,
    border_margin_mm: float | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Hallucination audit of a synthetic CT: true lesions kept or removed, lesions invented.

    In the spirit of Cohen et al. 2018 ("Distribution matching losses can hallucinate
    features"); every threshold is tied to the data's own noise floor. ``spacing`` in mm per
    array axis; masks binarised by ``> 0``; components use face connectivity.

    *Parenchyma* ``P``: brain parenchyma, i.e. ``labels`` in :data:`PARENCHYMA_LABELS` (grey and
    white matter) inside the body; without a label map, body voxels whose lightly smoothed true
    HU lies in ``soft_tissue_hu`` (default [-50, 100]: water-like soft tissue). ``dist``: each
    voxel's distance (mm) to the nearest voxel outside ``P``: the tissue border.

    *Noise floor* ``sigma``: the larger of the robust per-voxel noise sd of the true CT and of
    the residual ``pred - true`` (:func:`noise_floor_hu`, inside ``P`` away from its border
    and from true lesions). A synthetic CT that adds voxel noise raises its own floor; voxel
    noise is the metrics' business, not a lesion.

    (a) **Kept / removed.** For each component ``L`` of the true lesion mask: the shell ``S`` =
    voxels within ``shell_mm`` (default 6) of ``L`` but not within one voxel of any lesion,
    inside ``P`` (falling back to the one-voxel ring when that is empty). True contrast
    ``tc = mean(true[L]) - mean(true[S])``, synthetic contrast ``pc`` the same on the
    prediction. The lesion is *evaluable* when ``|tc| >= max(min_contrast_hu,
    evaluable_sigmas * sigma * sqrt(1/|L| + 1/|S|))`` (defaults 10 HU, 3 sd: the lesion stands
    out of the true CT's own noise); it is *kept* when ``pc`` has the sign of ``tc`` and
    ``|pc| >= keep_fraction * |tc|`` (default 0.5), *removed* otherwise.

    (b) **Invented.** The residual ``r = pred - true`` is smoothed at lesion scale (Gaussian
    sd ``lesion_radius_mm / 2`` per axis, >= 0.5 voxel; ``lesion_radius_mm`` = 5, the smallest
    lesion of interest) minus its local background (sd ``background_mm`` = 15 mm), both by
    normalised convolution inside ``P`` minus the ``shell_mm`` neighbourhood of true lesions:
    the *focal residual* ``f`` (smooth offsets, which MAE reports, cancel). The same filter on
    the true CT gives ``f_true``. Threshold ``T = max(detect_sigmas * sigma * ||k||,
    min_contrast_hu)`` with ``||k||`` the smoothing kernel's L2 norm (the sd of smoothed unit
    white noise) and ``detect_sigmas`` = 5. Suspicious voxels: ``|f| > T`` where
    ``|f_true| < T / 2`` (the truth shows nothing focal there). An *invented lesion* is a
    component of suspicious voxels with at least ``min_invented_voxels`` (3) voxels whose voxels
    lie at least ``border_margin_mm`` from the tissue border (``dist >= margin``). The margin
    is learned from the non-learned baseline's errors (:func:`learn_border_margin`: the
    distance from which the baseline's focal residual no longer depends on the border); None:
    :data:`DEFAULT_MARGIN_VOXELS` x the largest spacing.

    ``passed`` = every evaluable lesion kept and nothing invented.

    Returns a JSON-serialisable dict: ``n_true``, ``n_evaluable``, ``n_preserved`` (kept),
    ``n_removed``, ``lesions`` (per lesion: ``label``, ``volume_mm3``, ``true_contrast``,
    ``pred_contrast``, ``evaluable``, ``preserved``, ``status`` kept/removed/not evaluable,
    ``reason``), ``n_invented``, ``invented`` (``volume_mm3``, ``mean_diff_hu``,
    ``max_abs_focal_hu``, ``centroid_voxel``), ``noise_hu``, ``threshold_hu``,
    ``border_margin_mm``, ``searched_voxels``, ``passed`` and the ``params`` used.

    >>> rng = np.random.default_rng(0)
    >>> t = np.full((16, 32, 32), 40.0); les = np.zeros(t.shape, bool); les[6:10, 12:18, 12:18] = True
    >>> t[les] = 90.0; t += rng.normal(0, 10, t.shape); body = np.ones(t.shape)
    >>> lesion_audit(t, t + rng.normal(0, 10, t.shape), les, body)["passed"]
    True
    >>> r = lesion_audit(t, np.where(les, 40.0, t), les, body); r["n_removed"], r["passed"]
    (1, False)
    """
    true, pred, lesion, body, labels = _audit_inputs(ct_true_hu, ct_pred_hu, lesion_mask, body_mask,
                                                     labels)
    spacing, p = _audit_params(spacing, true.ndim, params)
    margin = DEFAULT_MARGIN_VOXELS * max(spacing) if border_margin_mm is None else float(border_margin_mm)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"lesion_audit: border_margin_mm must be a finite number >= 0, got {margin!r}")
    voxel_mm3 = float(np.prod(spacing))
    dev = _deviation(true, pred, lesion, body, labels, spacing, p)
    sigma = max(dev["noise_true"], dev["noise_resid"])

    # (a) kept / removed
    labels_l, n_true = ndimage.label(lesion)
    shell_struct = _ellipsoid(p["shell_mm"], spacing)
    ring = ndimage.generate_binary_structure(true.ndim, 1)
    pad = [(shell_struct.shape[i] - 1) // 2 + 1 for i in range(true.ndim)]
    lesions: list[dict[str, Any]] = []
    for idx, box in enumerate(ndimage.find_objects(labels_l), start=1):
        box = tuple(slice(max(0, b.start - q), min(n, b.stop + q)) for b, q, n in zip(box, pad, true.shape))
        comp = labels_l[box] == idx
        grown = ndimage.binary_dilation(comp, structure=shell_struct)
        near = ndimage.binary_dilation(lesion[box], structure=ring)
        cls = dev["classes"][box]
        major = np.bincount(cls[comp]).argmax() if cls[comp].any() else 0
        if major:  # contrast inside the lesion's (majority) tissue: no grey/white offset in it
            comp = comp & (cls == major)
        shell = grown & ~near & (cls == major if major else dev["parenchyma"][box])
        if not shell.any():
            shell = ndimage.binary_dilation(comp, structure=ring) & ~lesion[box] & body[box]
        entry: dict[str, Any] = {"label": idx, "volume_mm3": float(comp.sum() * voxel_mm3),
                                 "true_contrast": None, "pred_contrast": None, "evaluable": False,
                                 "preserved": False, "status": "not evaluable", "reason": ""}
        if not shell.any():
            entry["reason"] = "no shell of surrounding tissue around the lesion"
            lesions.append(entry)
            continue
        t_box, p_box = true[box], pred[box]
        tc = float(t_box[comp].mean(dtype=np.float64) - t_box[shell].mean(dtype=np.float64))
        pc = float(p_box[comp].mean(dtype=np.float64) - p_box[shell].mean(dtype=np.float64))
        entry["true_contrast"], entry["pred_contrast"] = tc, pc
        need_tc = max(p["min_contrast_hu"],
                      p["evaluable_sigmas"] * sigma * math.sqrt(1 / comp.sum() + 1 / shell.sum()))
        if abs(tc) < need_tc:
            entry["reason"] = f"true contrast {tc:.1f} HU below the {need_tc:.1f} HU the noise floor allows"
        else:
            need = p["keep_fraction"] * abs(tc)
            kept = bool(np.sign(pc) == np.sign(tc) and abs(pc) >= need)
            entry.update(evaluable=True, preserved=kept, status="kept" if kept else "removed",
                         reason="kept" if kept else
                         f"removed: synthetic contrast {pc:.1f} HU, needed {math.copysign(need, tc):.1f} HU")
        lesions.append(entry)

    # (b) invented
    searched = dev["support"] & (dev["dist"] >= margin - 1e-6)
    cand, keep = _components(dev["suspicious"] & searched, p["min_invented_voxels"])
    invented: list[dict[str, Any]] = []
    for idx, box in enumerate(ndimage.find_objects(cand), start=1):
        if idx not in keep:
            continue
        region = cand[box] == idx
        centre = ndimage.center_of_mass(region)
        invented.append({
            "volume_mm3": float(region.sum() * voxel_mm3),
            "mean_diff_hu": float((pred[box][region] - true[box][region]).mean(dtype=np.float64)),
            "max_abs_focal_hu": float(np.abs(dev["focal"][box][region]).max()),
            "centroid_voxel": [float(c + b.start) for c, b in zip(centre, box)],
        })

    n_evaluable = sum(e["evaluable"] for e in lesions)
    n_kept = sum(e["preserved"] for e in lesions)
    return {
        "n_true": int(n_true), "n_evaluable": int(n_evaluable), "n_preserved": int(n_kept),
        "n_removed": int(n_evaluable - n_kept), "lesions": lesions,
        "n_invented": len(invented), "invented": invented,
        "noise_hu": sigma, "noise_true_hu": dev["noise_true"], "threshold_hu": dev["threshold"],
        "border_margin_mm": margin, "searched_voxels": int(searched.sum()),
        "passed": bool(n_kept == n_evaluable and not invented),
        "params": {"spacing": list(spacing), **{k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in p.items()}},
    }


def learn_border_margin(cases: Iterable[tuple[Any, ...]], *, interior_mm: float | None = None,
                        tolerance: float = 0.1, **params: Any) -> dict[str, Any]:
    """The tissue-border margin of :func:`lesion_audit`, learned from a baseline's errors.

    ``cases``: ``(true_hu, baseline_hu, lesion_mask or None, body_mask, labels or None,
    spacing)`` per subject (training subjects, the non-learned baseline's predictions). For
    every voxel of the search support (parenchyma away from true lesions) the audit's focal
    residual ``|f|``, in units of that subject's threshold ``T``, is pooled by the voxel's
    distance to the tissue border. The *interior level* is the mean over voxels at least
    ``interior_mm`` (default 10 mm or 2 x the largest spacing if more) from the border. The margin is the
    smallest distance ``d`` such that every layer from ``d`` inwards (voxels whose distance lies
    in ``[d', d' + min spacing)``, ``d' >= d``) has a mean within ``1 + tolerance`` (default
    10 %) of the interior level: where the baseline's error stops depending on the border.
    ``params``: :func:`lesion_audit`'s keyword parameters.

    Returns ``{"margin_mm", "interior_level", "layers": {distance: [mean |f|/T, voxels,
    suspicious fraction]}, "cases"}``.
    """
    fs, ds, ss = [], [], []
    spacings = []
    for i, case in enumerate(cases):
        if len(case) != 6:
            raise ValueError(f"learn_border_margin: case {i} must be (true, baseline, lesion, body, "
                             f"labels, spacing), got {len(case)} items")
        true, pred, lesion, body, labels = _audit_inputs(*case[:5])
        spacing, p = _audit_params(case[5], true.ndim, params)
        dev = _deviation(true, pred, lesion, body, labels, spacing, p)
        sup = dev["support"]
        fs.append(np.abs(dev["focal"][sup]) / dev["threshold"])
        ds.append(dev["dist"][sup])
        ss.append(dev["suspicious"][sup])
        spacings.append(spacing)
    if not fs:
        raise ValueError("learn_border_margin: no case given")
    f, d, sus = np.concatenate(fs), np.concatenate(ds), np.concatenate(ss)
    step = min(min(sp) for sp in spacings)
    deep = (max(10.0, 2.0 * max(max(sp) for sp in spacings)) if interior_mm is None
            else float(interior_mm))
    if not (f.size and (d >= deep).any()):
        return {"margin_mm": deep, "interior_level": None, "layers": {}, "cases": len(fs),
                "note": f"no support voxel {deep:g} mm from a border: margin set to that distance"}
    level = float(f[d >= deep].mean())
    starts = sorted({float(x) for x in np.round(np.unique(d), 3) if x < deep})
    layers: dict[str, list[float]] = {}
    for a in starts:
        sel = (d >= a - 1e-6) & (d < a + step - 1e-6)
        layers[f"{a:g}"] = [float(f[sel].mean()), int(sel.sum()), float(sus[sel].mean())]
    margin = deep
    for a in reversed(starts):  # inwards-out: stop at the first layer that exceeds the level
        if layers[f"{a:g}"][0] > (1.0 + tolerance) * level:
            break
        margin = a
    return {"margin_mm": float(margin), "interior_level": level, "layers": layers, "cases": len(fs)}


# ----------------------------------------------------------------------------- fastMRI metrics
# Reconstruction metrics of fastMRI (repository ``facebookresearch/fastMRI``, file
# ``fastmri/evaluate.py``), used for MR targets (k-space reconstruction, super-resolution). Each
# takes a ground-truth and a predicted volume ``(Z, H, W)`` (fastMRI: slices of one volume; here the
# [0, 1] MR magnitude) and computes exactly what fastMRI computes, with no cast and no mask:
#
# * NMSE = ||gt - pred||^2 / ||gt||^2 (``np.linalg.norm`` of the whole volume);
# * PSNR = ``peak_signal_noise_ratio(gt, pred, data_range=gt.max())`` over the whole volume;
# * SSIM = mean over slices of ``structural_similarity(gt[z], pred[z], data_range=gt.max())``
#   (skimage's default 7x7 uniform window; the volume's max is the range of every slice).
#
# fastMRI centre-crops both volumes to ``W x W`` before scoring; our slabs are already the evaluated
# field of view, so no crop here. ``gt.max() <= 0`` (an all-background volume) is rejected: the data
# range, and NMSE's denominator, would be zero.
FASTMRI_KEYS = ("nmse", "psnr", "ssim")
__all__ += ["FASTMRI_KEYS", "nmse", "fastmri_psnr", "fastmri_ssim", "fastmri_scores"]


def _check_fastmri(gt: Any, pred: Any, where: str, ndim: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"{where}: ground truth shape {gt.shape} != prediction shape {pred.shape}")
    if ndim is not None and gt.ndim != ndim:
        raise ValueError(f"{where}: expected a volume of {ndim} dimensions (Z, H, W), "
                         f"got shape {gt.shape}")
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: {name} holds {int(np.count_nonzero(~np.isfinite(arr)))} "
                             "non-finite (NaN/inf) values")
    if gt.size == 0 or not gt.max() > 0:
        raise ValueError(f"{where}: the ground truth's maximum must be > 0 (it is the data range "
                         "and NMSE's scale), got an empty or all-zero/negative volume")
    return gt, pred


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """fastMRI normalised MSE: ``||gt - pred||^2 / ||gt||^2`` over the whole array.

    >>> nmse(np.array([[3.0, 4.0]]), np.array([[3.0, 0.0]]))  # 16 / 25
    0.64
    """
    gt, pred = _check_fastmri(gt, pred, "nmse")
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def fastmri_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """fastMRI PSNR in dB with ``data_range = gt.max()``; ``inf`` for identical arrays.

    >>> round(fastmri_psnr(np.array([[0.0, 2.0]]), np.array([[0.0, 1.0]])), 4)  # 10 log10(4 / 0.5)
    9.0309
    """
    gt, pred = _check_fastmri(gt, pred, "fastmri_psnr")
    with np.errstate(divide="ignore"):
        value = peak_signal_noise_ratio(gt, pred, data_range=gt.max())
    return float(value)


def fastmri_ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """fastMRI SSIM: mean over the slices of a ``(Z, H, W)`` volume (H, W >= 7), range ``gt.max()``.

    >>> v = np.linspace(0, 1, 2 * 8 * 8).reshape(2, 8, 8)
    >>> fastmri_ssim(v, v)
    1.0
    """
    gt, pred = _check_fastmri(gt, pred, "fastmri_ssim", ndim=3)
    if min(gt.shape[1:]) < 2 * SSIM_CROP + 1:
        raise ValueError(f"fastmri_ssim: slices must be at least {2 * SSIM_CROP + 1}x"
                         f"{2 * SSIM_CROP + 1} (skimage's 7x7 window), got shape {gt.shape}")
    maxval = gt.max()
    total = 0
    for z in range(gt.shape[0]):  # summed in slice order and divided, as fastMRI does
        total = total + structural_similarity(gt[z], pred[z], data_range=maxval)
    return float(total / gt.shape[0])


def fastmri_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """fastMRI's three metrics for one volume: ``{"nmse", "psnr", "ssim"}``.

    >>> v = np.linspace(0, 1, 8 * 8 * 8).reshape(8, 8, 8)
    >>> s = fastmri_scores(v, v); (s["nmse"], s["psnr"], s["ssim"])
    (0.0, inf, 1.0)
    """
    return {"nmse": nmse(gt, pred), "psnr": fastmri_psnr(gt, pred), "ssim": fastmri_ssim(gt, pred)}
