"""DICOM series -> volume (numpy, RAS affine) -> NIfTI.

A *series* is the set of single-frame image files sharing one SeriesInstanceUID. Conversion:

1. read every file with pydicom; non-image objects (no PixelData, or SOP classes such as RT
   structure sets, presentation states, structured reports) are skipped and reported in
   ``meta["skipped"]``; a series with no image left is an error;
2. check that all slices share Rows, Columns, PixelSpacing and ImageOrientationPatient;
3. sort slices by the projection of ImagePositionPatient onto the slice normal
   (row direction x column direction), and check the gaps are uniform;
4. apply RescaleSlope/RescaleIntercept per slice (HU for CT);
5. build the voxel -> world affine in DICOM LPS and flip the first two axes to RAS (NIfTI/nibabel).

The volume axes are (X, Y, Z) = (column index, row index, slice index), so ``vol[i, j, k]`` is
pixel ``(row=j, column=i)`` of the k-th slice in sorted order.

>>> from pathlib import Path
>>> files = group_series(Path("dicom_dir"))            # doctest: +SKIP
>>> vol, affine, meta = series_to_volume(next(iter(files.values())))   # doctest: +SKIP
>>> write_series_nifti(files[uid], Path("out/ct.nii.gz"))              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

#: SOP classes (exact UID or UID prefix) that carry no volume slice, with a readable name.
NON_IMAGE_SOP_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.88", "structured report / key object selection"),
    ("1.2.840.10008.5.1.4.1.1.481.1", "RT image"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RT dose"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RT structure set"),
    ("1.2.840.10008.5.1.4.1.1.481.4", "RT beams treatment record"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RT plan"),
    ("1.2.840.10008.5.1.4.1.1.481.6", "RT brachy treatment record"),
    ("1.2.840.10008.5.1.4.1.1.481.7", "RT treatment summary record"),
    ("1.2.840.10008.5.1.4.1.1.481.8", "RT ion plan"),
    ("1.2.840.10008.5.1.4.1.1.481.9", "RT ion beams treatment record"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data / registration / segmentation / surface"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.9", "waveform"),
)

#: Absolute tolerance (direction cosines, mm) when comparing geometry between slices.
GEOMETRY_ATOL = 1e-4
#: Allowed relative deviation of a slice gap from the series' median gap.
SPACING_RTOL = 0.01


class DicomError(ValueError):
    """A DICOM file or series cannot be turned into a volume; the message names file and field."""


@dataclass
class _Slice:
    path: Path
    ds: Any  # pydicom Dataset
    position: np.ndarray  # ImagePositionPatient (LPS, mm)


def _non_image_reason(ds: Any) -> str | None:
    """Why ``ds`` is not a volume slice, or None when it is an image."""
    sop = str(ds.get("SOPClassUID", ""))
    for uid, name in NON_IMAGE_SOP_CLASSES:
        if sop == uid or sop.startswith(uid + "."):
            return f"SOP class {sop} ({name}) is not an image slice"
    if "PixelData" not in ds:
        return f"no PixelData (SOP class {sop or 'missing'}): not an image"
    return None


def _require(ds: Any, path: Path, field: str) -> Any:
    value = ds.get(field)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise DicomError(f"{path}: missing {field}, needed to build the volume geometry")
    return value


def _floats(value: Any, n: int, path: Path, field: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{path}: {field}={value!r} is not numeric") from exc
    if arr.shape != (n,):
        raise DicomError(f"{path}: {field} has {arr.size} values, expected {n}")
    return arr


class _Skip(Exception):
    """Internal: the file is not an image slice (reason in args[0])."""


def _read(path: Path) -> Any:
    try:
        return pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise _Skip(f"not a DICOM file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DicomError(f"{path}: cannot read DICOM file: {exc}") from exc


def _check_image(ds: Any, path: Path) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError(f"{path}: NumberOfFrames={frames}; only single-frame slices are supported")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DicomError(f"{path}: SamplesPerPixel={spp} "
                         f"(PhotometricInterpretation {ds.get('PhotometricInterpretation')}); "
                         "expected a grey-scale image (1 sample per pixel)")
    for field in ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient",
                  "ImagePositionPatient"):
        _require(ds, path, field)


def _check_same(ref: _Slice, other: _Slice) -> None:
    for field in ("Rows", "Columns"):
        a, b = int(ref.ds.get(field)), int(other.ds.get(field))
        if a != b:
            raise DicomError(f"{other.path}: {field}={b} differs from {field}={a} in {ref.path}; "
                             "all slices of a series must share it")
    for field, n in (("PixelSpacing", 2), ("ImageOrientationPatient", 6)):
        a = _floats(ref.ds.get(field), n, ref.path, field)
        b = _floats(other.ds.get(field), n, other.path, field)
        if not np.allclose(a, b, atol=GEOMETRY_ATOL, rtol=0):
            raise DicomError(f"{other.path}: {field}={b.tolist()} differs from {a.tolist()} in "
                             f"{ref.path}; all slices of a series must share it")


def _direction_cosines(ds: Any, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = _floats(ds.ImageOrientationPatient, 6, path, "ImageOrientationPatient")
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 1e-2 or abs(nc - 1) > 1e-2 or abs(float(row @ col)) > 1e-2:
        raise DicomError(f"{path}: ImageOrientationPatient={iop.tolist()} is not two orthogonal "
                         "unit vectors")
    row, col = row / nr, col / nc
    return row, col, np.cross(row, col)


def _rescale(ds: Any) -> tuple[float, float]:
    slope = ds.get("RescaleSlope", 1.0)
    intercept = ds.get("RescaleIntercept", 0.0)
    return float(slope if slope not in (None, "") else 1.0), \
        float(intercept if intercept not in (None, "") else 0.0)


def _slice_step(slices: list[_Slice], normal: np.ndarray,
                spacing_rtol: float) -> tuple[np.ndarray, float]:
    """Sort ``slices`` in place along ``normal``; return (step vector LPS, spacing mm)."""
    slices.sort(key=lambda s: float(s.position @ normal))
    proj = np.array([float(s.position @ normal) for s in slices])
    if len(slices) == 1:
        s = slices[0]
        thick = s.ds.get("SliceThickness") or s.ds.get("SpacingBetweenSlices")
        if thick in (None, "") or float(thick) <= 0:
            raise DicomError(f"{s.path}: single-slice series needs a positive SliceThickness "
                             f"(got {thick!r}) to define the slice spacing")
        return normal * float(thick), float(thick)
    gaps = np.diff(proj)
    for i, gap in enumerate(gaps):
        if gap < GEOMETRY_ATOL:
            raise DicomError(
                f"{slices[i].path} and {slices[i + 1].path} lie at the same position "
                f"{proj[i]:.4f} mm along the slice normal (duplicate slice, or several "
                "acquisitions/echoes mixed in one series)")
    # reference spacing: the median gap; with only two gaps the smaller one (a missing slice
    # doubles a gap, so the larger one is the suspect)
    median = float(np.median(gaps)) if len(gaps) >= 3 else float(gaps.min())
    tol = max(spacing_rtol * median, GEOMETRY_ATOL)
    for i, gap in enumerate(gaps):
        if abs(gap - median) > tol:
            raise DicomError(
                f"non-uniform slice spacing: gap {gap:.4f} mm between {slices[i].path} "
                f"(at {proj[i]:.4f}) and {slices[i + 1].path} (at {proj[i + 1]:.4f}) differs "
                f"from the series spacing {median:.4f} mm by more than {tol:.4f} mm "
                "(missing slice?)")
    step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    return step, float(proj[-1] - proj[0]) / (len(slices) - 1)


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def series_to_volume(files: list[Path], *, spacing_rtol: float = SPACING_RTOL
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Turn the files of one DICOM series into ``(volume, affine, meta)``.

    ``volume`` is float32 with axes (X=column, Y=row, Z=sorted slice), rescaled with
    RescaleSlope/RescaleIntercept (Hounsfield units for CT). ``affine`` (4x4) maps voxel
    indices to RAS+ millimetres, as nibabel expects. ``meta`` is JSON-serialisable and lists the
    skipped non-image files under ``"skipped"`` (``{"file", "reason"}``).

    Raises :class:`DicomError` naming the file and field when the series is not a regular
    stack of slices.

    >>> vol, affine, meta = series_to_volume(sorted(Path("series").glob("*.dcm")))  # doctest: +SKIP
    >>> vol.shape, meta["spacing"]                                                  # doctest: +SKIP
    ((512, 512, 120), [0.7, 0.7, 2.5])
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise DicomError("series_to_volume: empty file list, expected the files of one series")
    slices: list[_Slice] = []
    skipped: list[dict[str, str]] = []
    for path in sorted(paths):
        try:
            ds = _read(path)
            reason = _non_image_reason(ds)
            if reason:
                raise _Skip(reason)
        except _Skip as skip:
            log.info("skipping %s: %s", path, skip.args[0])
            skipped.append({"file": str(path), "reason": str(skip.args[0])})
            continue
        _check_image(ds, path)
        slices.append(_Slice(path, ds, _floats(ds.ImagePositionPatient, 3, path,
                                               "ImagePositionPatient")))
    if not slices:
        reasons = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in skipped)
        raise DicomError(f"no image slices among {len(paths)} file(s): {reasons}")

    series_uids = sorted({str(s.ds.get("SeriesInstanceUID", "")) for s in slices})
    if len(series_uids) > 1:
        raise DicomError(f"files belong to {len(series_uids)} series (SeriesInstanceUID "
                         f"{series_uids}); convert each series separately (see group_series)")

    ref = slices[0]
    for other in slices[1:]:
        _check_same(ref, other)
    row, col, normal = _direction_cosines(ref.ds, ref.path)
    step, dz = _slice_step(slices, normal, spacing_rtol)
    dr, dc = _floats(ref.ds.PixelSpacing, 2, ref.path, "PixelSpacing")  # row spacing, col spacing
    if dr <= 0 or dc <= 0:
        raise DicomError(f"{ref.path}: PixelSpacing={[dr, dc]} must be positive")

    n_rows, n_cols = int(ref.ds.Rows), int(ref.ds.Columns)
    volume = np.empty((n_cols, n_rows, len(slices)), dtype=np.float32)
    rescales: set[tuple[float, float]] = set()
    for k, s in enumerate(slices):
        try:
            pixels = s.ds.pixel_array
        except Exception as exc:  # decoder missing / corrupt pixel data
            raise DicomError(f"{s.path}: cannot decode PixelData (TransferSyntaxUID "
                             f"{getattr(s.ds.file_meta, 'TransferSyntaxUID', '?')}): {exc}") from exc
        if pixels.shape != (n_rows, n_cols):
            raise DicomError(f"{s.path}: pixel array shape {pixels.shape} does not match "
                             f"Rows x Columns = {(n_rows, n_cols)}")
        slope, intercept = _rescale(s.ds)
        rescales.add((slope, intercept))
        volume[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T

    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = step
    lps[:3, 3] = slices[0].position
    affine = LPS_TO_RAS @ lps

    ds0 = ref.ds
    modality = str(ds0.get("Modality", ""))
    meta: dict[str, Any] = {
        "series_uid": series_uids[0],
        "study_uid": str(ds0.get("StudyInstanceUID", "")),
        "patient_id": str(ds0.get("PatientID", "")),
        "modality": modality,
        "series_description": str(ds0.get("SeriesDescription", "")),
        "n_files": len(paths),
        "n_slices": len(slices),
        "shape": list(volume.shape),
        "spacing": [float(dc), float(dr), float(dz)],
        "slice_thickness": float(ds0.SliceThickness) if ds0.get("SliceThickness") else None,
        "orientation": [float(v) for v in ds0.ImageOrientationPatient],
        "rescale": [list(r) for r in sorted(rescales)],
        "units": "HU" if modality == "CT" else "scanner",
        "skipped": skipped,
    }
    return volume, affine, meta


def write_series_nifti(files: list[Path], out_path: Path) -> dict[str, Any]:
    """Convert one DICOM series to a NIfTI file (float32, RAS affine, mm); return the meta.

    Written to a temporary name in the target folder and renamed, so ``out_path`` is either
    absent or complete. ``out_path`` must end in ``.nii`` or ``.nii.gz``.

    >>> meta = write_series_nifti(files, Path("out/CT_1.2.3.nii.gz"))   # doctest: +SKIP
    >>> meta["path"], meta["shape"]                                    # doctest: +SKIP
    ('out/CT_1.2.3.nii.gz', [512, 512, 120])
    """
    out_path = Path(out_path)
    if not (out_path.name.endswith(".nii.gz") or out_path.name.endswith(".nii")):
        raise ValueError(f"write_series_nifti: {out_path} must end in .nii or .nii.gz")
    volume, affine, meta = series_to_volume(files)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)  # scanner coordinates
    image.set_sform(affine, code=1)
    tmp = out_path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{out_path.name}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    meta["path"] = str(out_path)
    return meta


def group_series(dicom_dir: Path) -> dict[str, list[Path]]:
    """Walk ``dicom_dir`` and group DICOM files by SeriesInstanceUID (paths sorted).

    Files that are not DICOM (licence texts, hidden files) or carry no SeriesInstanceUID are
    ignored. Non-image objects stay in their series; :func:`series_to_volume` skips them.

    >>> groups = group_series(Path("extracted_zip"))   # doctest: +SKIP
    >>> {uid: len(paths) for uid, paths in groups.items()}   # doctest: +SKIP
    {'1.2.3': 120}
    """
    root = Path(dicom_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"group_series: {root} is not a directory")
    groups: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            log.debug("group_series: ignoring %s (%s)", path, exc)
            continue
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            log.debug("group_series: ignoring %s (no SeriesInstanceUID)", path)
            continue
        groups.setdefault(str(uid), []).append(path)
    return groups
