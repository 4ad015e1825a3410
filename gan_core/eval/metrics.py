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
from collections.abc import Mapping, Sequence
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
def _ellipsoid(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element: the voxel ellipsoid of ``radius_mm`` (>= 1 voxel per axis)."""
    radii = [max(1, int(round(radius_mm / s))) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grids, radii)) <= 1.0 + 1e-9


def _grow(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=_ellipsoid(radius_mm, spacing))


def lesion_audit(
    ct_true_hu: np.ndarray,
    ct_pred_hu: np.ndarray,
    lesion_mask: np.ndarray | None,
    body_mask: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_contrast_fraction: float = 0.5,
    min_abs_contrast_hu: float = 10.0,
    invent_threshold_hu: float = 25.0,
    min_invented_volume_mm3: float = 27.0,
    shell_mm: float = 3.0,
    erode_mm: float = 2.0,
    smooth_sigma_mm: float = 1.0,
    background_mm: float = 8.0,
    min_invented_voxels: int = 4,
    soft_tissue_hu: tuple[float, float] = (-200.0, 200.0),
) -> dict[str, Any]:
    """Hallucination audit of a synthetic CT: are true lesions kept, and are none invented?

    Definitions (``spacing`` in mm, same axis order as the arrays; masks binarised by ``> 0``;
    connected components use face connectivity, ``scipy.ndimage.label``'s default):

    *Soft tissue* ``T`` = body mask and true HU in ``soft_tissue_hu`` (default [-200, 200]: fat,
    water, muscle, organs; excludes air, lung and bone, where misregistration dominates).

    (a) Lesion preservation. For each component ``L`` of the true lesion mask (within the body):
    the *shell* ``S`` = voxels within ``shell_mm`` of ``L`` (ellipsoidal dilation, at least one
    voxel per axis), minus every lesion voxel, within ``T``. The true contrast is
    ``mean(true[L]) - mean(true[S])``; the predicted contrast is ``mean(pred[L]) - mean(pred[S])``
    over the same voxels. The lesion is *evaluable* when ``S`` is non-empty and
    ``|true contrast| >= min_abs_contrast_hu`` (a lesion invisible in the true CT cannot be
    judged); it is *preserved* when evaluable, the predicted contrast has the same sign and
    ``|pred contrast| >= max(min_contrast_fraction * |true contrast|, min_abs_contrast_hu)``.

    (b) Invented lesions: focal structure in the synthetic CT where the true CT has none. The
    search domain ``D`` = ``T`` eroded by ``erode_mm`` minus voxels within ``shell_mm`` of any
    true lesion (true lesions are judged by (a)). Inside ``D``, by normalised convolution (nothing
    outside ``D`` leaks in), each image's *focal contrast* is its Gaussian smoothing at
    ``smooth_sigma_mm`` (at least one voxel: one voxel of noise is not a lesion) minus its local
    background at ``background_mm`` (at least twice that): ``F_pred``, ``F_true``. A voxel is
    suspicious where ``|F_pred| > invent_threshold_hu`` while ``|F_true| < invent_threshold_hu/2``:
    a blob the synthetic CT shows and the truth does not. Smooth offsets (calibration, bias: MAE
    reports them) and tissue borders present in both images are not lesions. Each connected
    component of suspicious voxels with volume ``>= min_invented_volume_mm3`` and at least
    ``min_invented_voxels`` voxels is an invented-lesion candidate.

    ``passed`` = every evaluable lesion preserved and no invented candidate.

    Defaults: 25 HU is about the smallest lesion-to-parenchyma contrast radiologists call (liver
    metastases and most soft-tissue lesions are 20-80 HU from their background), while CT and
    GAN noise of 10-20 HU per voxel smoothed with a 1 mm Gaussian in 3D falls to ~2-4 HU, so
    noise alone never crosses it. 27 mm3 (a 3 mm cube, about a 4 mm sphere) is the smallest
    lesion that is reported clinically, i.e. a few voxels at typical sCT spacings (27 voxels at
    1 mm, ~11 at 1x1x2.5 mm). Preservation asks for half of the true contrast and at least
    10 HU, the visible minimum.

    Returns a JSON-serialisable dict: ``n_true``, ``n_evaluable``, ``n_preserved``, ``lesions``
    (per lesion: ``label``, ``volume_mm3``, ``true_contrast``, ``pred_contrast``, ``evaluable``,
    ``preserved``, ``reason``), ``n_invented``, ``invented`` (``volume_mm3``, ``mean_diff_hu``
    = mean raw ``pred - true`` over the region, ``max_abs_smoothed_diff_hu``, ``centroid_voxel``),
    ``passed`` and the ``params`` used.

    >>> t = np.full((20, 20, 20), 40.0); t[8:12, 8:12, 8:12] = 90.0
    >>> les = t > 60; body = np.ones_like(t)
    >>> lesion_audit(t, t.copy(), les, body)["passed"]
    True
    >>> lesion_audit(t, np.full_like(t, 40.0), les, body)["n_preserved"]
    0
    """
    true, pred, body = _check(ct_true_hu, ct_pred_hu, body_mask, "lesion_audit")
    body_b = body.astype(bool)
    if lesion_mask is None:
        lesion = np.zeros(true.shape, dtype=bool)
    else:
        lesion = np.asarray(lesion_mask)
        if lesion.shape != true.shape:
            raise ValueError(f"lesion_audit: lesion mask shape {lesion.shape} != image shape {true.shape}")
        lesion = lesion > 0
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != true.ndim or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise ValueError(f"lesion_audit: spacing must be {true.ndim} positive numbers (mm), got {spacing}")
    for name, value in (("min_contrast_fraction", min_contrast_fraction),
                        ("min_abs_contrast_hu", min_abs_contrast_hu),
                        ("invent_threshold_hu", invent_threshold_hu),
                        ("min_invented_volume_mm3", min_invented_volume_mm3),
                        ("shell_mm", shell_mm), ("erode_mm", erode_mm),
                        ("smooth_sigma_mm", smooth_sigma_mm), ("background_mm", background_mm)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"lesion_audit: {name} must be a finite number >= 0, got {value!r}")
    lo_st, hi_st = soft_tissue_hu
    voxel_mm3 = float(np.prod(spacing))
    soft = body_b & (true >= lo_st) & (true <= hi_st)

    # (a) lesion preservation
    lesion &= body_b
    labels, n_true = ndimage.label(lesion)
    shell_struct = _ellipsoid(shell_mm, spacing)
    pad = [(shell_struct.shape[i] - 1) // 2 for i in range(true.ndim)]
    lesions: list[dict[str, Any]] = []
    for idx, box in enumerate(ndimage.find_objects(labels), start=1):
        box = tuple(slice(max(0, b.start - p), min(n, b.stop + p))
                    for b, p, n in zip(box, pad, true.shape))
        comp = labels[box] == idx
        shell = ndimage.binary_dilation(comp, structure=shell_struct) & ~lesion[box] & soft[box]
        entry: dict[str, Any] = {"label": idx, "volume_mm3": float(comp.sum() * voxel_mm3),
                                 "true_contrast": None, "pred_contrast": None,
                                 "evaluable": False, "preserved": False, "reason": ""}
        if not shell.any():
            entry["reason"] = "no soft-tissue shell around the lesion"
            lesions.append(entry)
            continue
        t_box, p_box = true[box], pred[box]
        tc = float(t_box[comp].mean(dtype=np.float64) - t_box[shell].mean(dtype=np.float64))
        pc = float(p_box[comp].mean(dtype=np.float64) - p_box[shell].mean(dtype=np.float64))
        entry["true_contrast"], entry["pred_contrast"] = tc, pc
        if abs(tc) < min_abs_contrast_hu:
            entry["reason"] = f"true contrast {tc:.1f} HU below {min_abs_contrast_hu} HU"
        else:
            need = max(min_contrast_fraction * abs(tc), min_abs_contrast_hu)
            entry["evaluable"] = True
            entry["preserved"] = bool(np.sign(pc) == np.sign(tc) and abs(pc) >= need)
            entry["reason"] = ("preserved" if entry["preserved"] else
                               f"synthetic contrast {pc:.1f} HU, needed {math.copysign(need, tc):.1f} HU")
        lesions.append(entry)

    # (b) invented lesions
    domain = soft
    if erode_mm > 0:
        domain = ndimage.binary_erosion(domain, structure=_ellipsoid(erode_mm, spacing))
    if n_true:
        domain &= ~ndimage.binary_dilation(lesion, structure=shell_struct)
    invented: list[dict[str, Any]] = []
    if domain.any():
        dom_f = domain.astype(np.float32)

        def nsmooth(x: np.ndarray, sig: list[float]) -> np.ndarray:
            # normalised convolution inside the domain: nothing outside D leaks in
            w = ndimage.gaussian_filter(dom_f, sig, mode="constant")
            return ndimage.gaussian_filter(np.where(domain, x, np.float32(0.0)), sig, mode="constant") / np.maximum(w, np.float32(1e-12))

        sig = [max(smooth_sigma_mm / s, 1.0) for s in spacing]  # at least one voxel
        sig_bg = [max(background_mm / s, 2.0 * g) for s, g in zip(spacing, sig)]
        focal_pred = nsmooth(pred, sig) - nsmooth(pred, sig_bg)
        focal_true = nsmooth(true, sig) - nsmooth(true, sig_bg)
        smooth = np.where(domain & (np.abs(focal_true) < 0.5 * invent_threshold_hu), focal_pred, np.float32(0.0))
        del focal_pred, focal_true
        cand, n_cand = ndimage.label(domain & (np.abs(smooth) > invent_threshold_hu))
        for idx, box in enumerate(ndimage.find_objects(cand), start=1):
            region = cand[box] == idx
            vol = float(region.sum() * voxel_mm3)
            if vol < min_invented_volume_mm3 or region.sum() < min_invented_voxels:
                continue
            centre = ndimage.center_of_mass(region)
            invented.append({
                "volume_mm3": vol,
                "mean_diff_hu": float((pred[box][region] - true[box][region]).mean(dtype=np.float64)),
                "max_abs_focal_contrast_hu": float(np.abs(smooth[box][region]).max()),
                "centroid_voxel": [float(c + b.start) for c, b in zip(centre, box)],
            })

    n_evaluable = sum(e["evaluable"] for e in lesions)
    n_preserved = sum(e["preserved"] for e in lesions)
    return {
        "n_true": int(n_true),
        "n_evaluable": int(n_evaluable),
        "n_preserved": int(n_preserved),
        "lesions": lesions,
        "n_invented": len(invented),
        "invented": invented,
        "passed": bool(n_preserved == n_evaluable and not invented),
        "params": {
            "spacing": list(spacing), "min_contrast_fraction": min_contrast_fraction,
            "min_abs_contrast_hu": min_abs_contrast_hu, "invent_threshold_hu": invent_threshold_hu,
            "min_invented_volume_mm3": min_invented_volume_mm3, "shell_mm": shell_mm,
            "erode_mm": erode_mm, "smooth_sigma_mm": smooth_sigma_mm, "background_mm": background_mm,
            "min_invented_voxels": min_invented_voxels,
            "soft_tissue_hu": list(soft_tissue_hu),
        },
    }


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
