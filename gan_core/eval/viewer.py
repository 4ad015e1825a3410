"""The evaluation's 3-D viewer report: one self-contained HTML file (``report.html``) per run.

For each viewed subject it shows input | prediction | target | |error| (MR -> CT: MR | synthetic
CT | CT | |error| in HU) as four linked NiiVue canvases, each with axial, coronal and sagittal
views (clicking one moves the crosshair in all), window presets for HU targets
(:data:`WINDOW_PRESETS`), the lesion mask and the lesion audit's result as overlays, and the
subject's metrics beside the baseline's (plus the cohort table). Nothing is fetched at view time:
the viewer is NiiVue (npm ``@niivue/niivue``, BSD-2-Clause, vendored in ``viewer_assets/`` with
its licence) inlined as gzip + base64 and unpacked by the browser, and every volume is an int16
NIfTI, gzip, base64, inside the page.

:func:`subject_view` packs one subject while the evaluator has its arrays;
:func:`write_viewer` writes the page (temp name, then rename).

>>> import numpy as np
>>> from gan_core.config import TaskConfig
>>> from gan_core.tasks.mr2ct import MRToCT
>>> slab = {"mr": np.zeros((4, 8, 8), np.float32), "ct": np.zeros((4, 8, 8), np.float32),
...         "mask": np.ones((4, 8, 8), np.uint8)}
>>> v = subject_view(MRToCT(TaskConfig()), "s1", slab["mr"][None], slab, {"model": slab["ct"]},
...                  {"subject": "s1", "model": {"mae": 1.0}}, (2.0, 1.0, 1.0), method="model")
>>> sorted(v.volumes), v.overlays
(['error', 'input', 'prediction', 'target'], {})
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gan_core.eval.report import finite

if TYPE_CHECKING:
    from gan_core.tasks import Task

__all__ = ["VIEWER_FILE", "NIIVUE_VERSION", "WINDOW_PRESETS", "AUDIT_CLASSES", "SubjectView",
           "subject_view", "write_viewer", "nifti_b64", "quantize"]

#: The report's file name in an evaluation folder.
VIEWER_FILE = "report.html"
#: The vendored NiiVue (``viewer_assets/niivue.umd.js``, see its README for the sha256).
NIIVUE_VERSION = "0.69.0"
#: Window presets for HU targets: name -> (level, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (50.0, 400.0), "brain": (40.0, 80.0), "bone": (400.0, 1800.0),
    "full": (500.0, 3000.0)}
#: The audit overlay's labels: value -> (name, RGB).
AUDIT_CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("lesion preserved", (0, 210, 0)), 2: ("lesion not preserved", (255, 30, 30)),
    3: ("lesion not evaluable", (255, 210, 0)), 4: ("invented lesion", (255, 0, 255))}
#: Upper end of the |error| colour scale: HU targets, [0, 1] magnitude targets.
ERROR_MAX_HU, ERROR_MAX_UNIT = 300.0, 0.3

_ASSETS = Path(__file__).with_name("viewer_assets")


@dataclass
class SubjectView:
    """One subject of the report: base64 gzip int16 NIfTI volumes and its report row."""

    subject: str
    volumes: dict[str, str]
    overlays: dict[str, str] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, int, int] = (0, 0, 0)


def nifti_b64(array: np.ndarray, affine: np.ndarray, *, slope: float = 1.0, inter: float = 0.0) -> str:
    """A 3D array as a gzip NIfTI-1, base64: a uint8 array as uint8 with ``slope``/``inter`` in
    the header (see :func:`quantize`), else int16 (integer-valued arrays that fit are stored as
    they are; others are scaled by the header's ``scl_slope``/``scl_inter``).

    >>> import nibabel as nib
    >>> s = nifti_b64(np.arange(8, dtype=np.float32).reshape(2, 2, 2) * 0.5, np.eye(4))
    >>> img = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(s)))
    >>> str(img.get_data_dtype()), round(float(img.get_fdata().max()), 3)
    ('int16', 3.5)
    """
    import nibabel as nib

    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"nifti_b64: expected a 3D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("nifti_b64: the array holds NaN/Inf values")
    fits = arr.size == 0 or (arr.min() >= -32768 and arr.max() <= 32767)
    if arr.dtype == np.uint8:
        img = nib.Nifti1Image(arr, np.asarray(affine, np.float64))
        img.header.set_slope_inter(float(slope), float(inter))
    elif fits and np.array_equal(arr, np.round(arr)):
        img = nib.Nifti1Image(arr.astype(np.int16), np.asarray(affine, np.float64))
        img.header.set_slope_inter(1.0, 0.0)
    else:  # nibabel picks the slope/intercept that maps the float range onto int16
        img = nib.Nifti1Image(arr.astype(np.float32), np.asarray(affine, np.float64))
        img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    return base64.b64encode(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)).decode("ascii")


def quantize(array: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float, float]:
    """``array`` clipped to ``[lo, hi]`` on 256 levels: ``(uint8 array, slope, inter)``, value =
    ``slope * q + inter`` (display-only volumes: the MR, the |error|; a quarter of int16's
    size after gzip).

    >>> q, slope, inter = quantize(np.array([0.0, 2.0, 10.0, 99.0]), 0.0, 10.0)
    >>> q.tolist(), round(slope * 255 + inter, 6)
    ([0, 51, 255, 255], 10.0)
    """
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        hi = lo + 1.0
    slope = (hi - lo) / 255.0
    q = np.clip(np.round((np.asarray(array, np.float32) - lo) / slope), 0, 255).astype(np.uint8)
    return q, slope, lo


def _volume(slab_array: np.ndarray) -> np.ndarray:
    """A ``(Z, H, W)`` slab array -> the ``(X, Y, Z)`` volume it was packed from."""
    return np.moveaxis(np.asarray(slab_array), 0, 2)


def _audit_labels(audit: dict[str, Any] | None, lesion: np.ndarray | None, body: np.ndarray,
                  spacing: Sequence[float]) -> np.ndarray | None:
    """The audit as a label map ``(Z, H, W)`` (:data:`AUDIT_CLASSES`): each true lesion by its
    verdict (components numbered as ``lesion_audit`` numbers them), each invented candidate as a
    ball of its volume at its centroid. None when the subject was not audited."""
    from scipy import ndimage

    if not audit:
        return None
    out = np.zeros(body.shape, np.uint8)
    if lesion is not None:
        labels, _ = ndimage.label((np.asarray(lesion) > 0) & (body > 0))
        for entry in audit.get("lesions", []):
            cls = 1 if entry.get("preserved") else 2 if entry.get("evaluable") else 3
            out[labels == int(entry["label"])] = cls
    grid = np.indices(body.shape, dtype=np.float32)
    sp = np.asarray(spacing, np.float32).reshape(-1, 1, 1, 1)
    for inv in audit.get("invented", []):
        c = np.asarray(inv["centroid_voxel"], np.float32).reshape(-1, 1, 1, 1)
        radius = max((3.0 * float(inv["volume_mm3"]) / (4.0 * np.pi)) ** (1 / 3), float(sp.min()))
        out[(((grid - c) * sp) ** 2).sum(0) <= radius ** 2] = 4
    return out


def subject_view(task: "Task", subject: str, image: np.ndarray, slab: dict[str, np.ndarray],
                 preds: dict[str, np.ndarray], row: dict[str, Any],
                 spacing: Sequence[float] | None, *, method: str) -> SubjectView:
    """Pack one subject for the report: the network input ``image`` ``(C, Z, H, W)``, ``method``'s
    prediction, the target and the |error| (target units, inside the body mask), plus the
    ``lesion`` mask and ``method``'s audit from ``row`` as overlays. ``spacing``: mm per slab axis
    ``(Z, H, W)`` (None: 1 mm)."""
    sp_zhw = tuple(float(s) for s in spacing) if spacing else (1.0, 1.0, 1.0)
    affine = np.diag([sp_zhw[1], sp_zhw[2], sp_zhw[0], 1.0])
    mask = np.asarray(slab["mask"]) > 0
    img = np.asarray(image, np.float32)
    shown = img[0] if img.shape[0] == 1 else np.argmax(img, 0).astype(np.float32)
    target = task.to_target_units(np.asarray(slab[task.target], np.float32), np.ones_like(mask))
    pred = task.to_target_units(np.asarray(preds[method], np.float32), mask)
    error = np.where(mask, np.abs(pred - target), 0.0)
    as_int = task.target_unit == "HU"
    inside = shown[mask] if mask.any() else shown
    display = {"input": quantize(shown, *np.percentile(inside, [0.5, 99.5])),
               "error": quantize(error, 0.0, 2 * (ERROR_MAX_HU if as_int else ERROR_MAX_UNIT))}
    vols = {"prediction": np.round(pred) if as_int else pred, "target": np.round(target) if as_int else target}
    overlays: dict[str, np.ndarray] = {}
    lesion = slab.get("lesion")
    if lesion is not None and np.any(lesion):
        overlays["lesion"] = (np.asarray(lesion) > 0).astype(np.uint8)
    audit = (row.get(method) or {}).get("audit") if isinstance(row.get(method), dict) else None
    labels = _audit_labels(audit, lesion, mask, sp_zhw)
    if labels is not None:
        overlays["audit"] = labels
    return SubjectView(
        subject=subject,
        volumes={**{k: nifti_b64(_volume(q), affine, slope=sl, inter=it) for k, (q, sl, it) in display.items()},
                 **{k: nifti_b64(_volume(v), affine) for k, v in vols.items()}},
        overlays={k: nifti_b64(_volume(v), affine) for k, v in overlays.items()},
        row=finite(row), shape=tuple(int(n) for n in _volume(mask).shape))  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def _niivue_packed() -> str:
    """The vendored NiiVue bundle, gzip + base64 (unpacked in the page by DecompressionStream)."""
    raw = (_ASSETS / "niivue.umd.js").read_bytes()
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def _json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</`` closes the element)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def write_viewer(path: str | os.PathLike[str], report: dict[str, Any], subjects: Sequence[SubjectView],
                 *, task: "Task", method: str, title: str | None = None) -> Path:
    """Write the self-contained viewer page for ``subjects`` of an evaluation ``report``
    (:func:`gan_core.eval.evaluate.evaluate`'s) atomically; returns the path.

    ``method``: whose prediction the volumes show (the metrics table shows every method).
    """
    if not subjects:
        raise ValueError("write_viewer: no subject to show")
    path = Path(path)
    hu = task.target_unit == "HU"
    names = {"mr": "MR", "ct": "CT", "labels": "labels"}
    src, tgt = names.get(task.source, task.source), names.get(task.target, task.target)
    target_range = [-1000.0, 1500.0] if hu else [0.0, 1.0]
    panels = [
        {"key": "input", "title": src, "colormap": "gray", "range": None, "windowed": False},
        {"key": "prediction", "title": f"synthetic {tgt} ({method})", "colormap": "gray",
         "range": target_range, "windowed": hu},
        {"key": "target", "title": tgt, "colormap": "gray", "range": target_range, "windowed": hu},
        {"key": "error", "title": f"|error| ({task.target_unit})", "colormap": "hot",
         "range": [0.0, ERROR_MAX_HU if hu else ERROR_MAX_UNIT], "windowed": False},
    ]
    data = {
        "title": title or f"medgan evaluation: {report.get('task', task.name)}",
        "task": task.name, "unit": task.target_unit, "method": method,
        "methods": report.get("methods", []), "aggregate": finite(report.get("aggregate", {})),
        "audit": finite((report.get("audit") or {}).get(method)),
        "presets": [{"name": k, "level": v[0], "width": v[1]} for k, v in WINDOW_PRESETS.items()] if hu else [],
        "panels": panels,
        "audit_classes": {str(k): {"name": n, "rgb": list(c)} for k, (n, c) in AUDIT_CLASSES.items()},
        "subjects": [{"id": s.subject, "shape": list(s.shape), "volumes": s.volumes,
                      "overlays": s.overlays, "row": s.row} for s in subjects],
        "niivue_version": NIIVUE_VERSION,
    }
    page = (_ASSETS / "report_template.html").read_text()
    page = (page.replace("@@TITLE@@", html.escape(data["title"]))
                .replace("@@NIIVUE_VERSION@@", NIIVUE_VERSION)
                .replace("@@NIIVUE_LICENSE@@", html.escape((_ASSETS / "LICENSE.niivue").read_text()))
                .replace("@@NIIVUE_GZ_B64@@", _niivue_packed())
                .replace("@@DATA_JSON@@", _json_for_script(data)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
