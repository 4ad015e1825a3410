"""Pipeline step ``preprocess``: resample, register MR to CT, mask, clip, split, pack shards.

Reads an ``ingest`` output (``<in>/manifest.json`` + ``<in>/subjects/...``) and writes::

    <out>/subjects/<id>/mr.nii.gz     MR (float32) registered to and resampled on the CT grid
    <out>/subjects/<id>/ct.nii.gz     CT (int16 HU) resampled to ``spacing``, clipped to
                                      [-1024, 3000]
    <out>/subjects/<id>/mask.nii.gz   body mask (uint8): the ingest mask, else computed from the CT
    <out>/subjects/<id>/lesion.nii.gz, labels.nii.gz   when the ingest had them (nearest neighbour)
    <out>/shards/{train,val,test}/    gan_core.data.shards.pack_shards (split by subject)
    <out>/manifest.json               step "preprocess": splits, per-subject registration and
                                      sha256, shard checksums, failed subjects, counts, timings

Geometry. NIfTI files are read with nibabel (:func:`gan_core.data.nifti.load_volume`, which
rejects truncated files: SimpleITK 2.5 silently zero-fills a truncated ``.nii.gz``) and handled
as SimpleITK images (LPS world coordinates, :func:`sitk_image`). The target grid covers the
CT's physical extent, centred on the CT's centre, with ``spacing`` (``None`` keeps the CT grid).
Written NIfTI files go through :func:`gan_core.data.nifti.save_volume` (byte-deterministic) with
the RAS affine ``diag(-1, -1, 1, 1) @ A_lps`` (see :func:`nifti_affine`), arrays in (X, Y, Z).

Registration (``register="rigid"`` or ``"affine"``; ``"none"`` keeps the scanner alignment): MR
(moving) to the resampled CT (fixed), Mattes mutual information (50 bins), regular-step gradient
descent with physical-shift scales, 2 levels (shrink 2, 1; smoothing 1, 0 voxels), random 25 %
sampling with a fixed seed, started from the better of the identity and a geometry-centred
initialisation; ``affine`` refines the rigid result and is kept only if it lowers the metric
(else the rigid result, with a ``note``). It runs single-threaded, so a rerun gives
identical transforms and byte-identical files. ``metric_before``/``metric_after`` are the
Mattes MI values (all voxels) at the identity and at the solution; SimpleITK returns the
*negative* mutual information, so **lower is better**. A solution worse than the identity is
rejected (identity kept, ``accepted: false`` and a ``flag``). ``transform.matrix_ras`` maps a CT
world point (RAS mm) to the MR world point showing the same anatomy (the phantom's
``meta.misalignment.matrix`` convention).

Shard indexes store each subject's NIfTI paths relative to the shard directory
(``../../subjects/<id>/mr.nii.gz``), so the output can be moved or downloaded anywhere.

Example:
    >>> import tempfile
    >>> from components.ingest import run_ingest
    >>> d = tempfile.mkdtemp()
    >>> _ = run_ingest("phantom", d + "/raw", subjects=3, shape=(32, 32, 16),
    ...                spacing=(6.0, 6.0, 9.0), misalign_mm=4)
    >>> m = run_preprocess(d + "/raw", d + "/processed", spacing=None)
    >>> sorted(m["splits"]), m["counts"]["subjects"], m["subjects"][0]["registration"]["accepted"]
    (['test', 'train', 'val'], 3, True)

CLI: ``python -m components.preprocess --input-uri URI --output-uri URI [--spacing 3,3,5|none]
[--register none|rigid|affine] [--split 0.6,0.2,0.2] [--seed 0] [--inplane 96,96]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import SimpleITK as sitk

import gan_core
from components import storage
from gan_core.data.masks import body_mask
from gan_core.data.nifti import NiftiError, load_volume, save_volume
from gan_core.data.normalize import CT_MAX, CT_MIN
from gan_core.data.shards import SubjectFiles, pack_shards, split_subjects

__all__ = [
    "REGISTER_MODES", "HU_CLIP", "MASK_THRESHOLD_HU", "PreprocessError", "nifti_affine",
    "to_xyz", "sitk_image", "target_grid", "mattes_metric", "register_mr_to_ct",
    "transform_matrix_ras",
    "preprocess_subject", "read_ingest_manifest", "run_preprocess", "main",
]

log = logging.getLogger(__name__)

REGISTER_MODES = ("none", "rigid", "affine")
#: CT window kept in the output (HU); the same range the normaliser maps to [-1, 1].
HU_CLIP = (float(CT_MIN), float(CT_MAX))
#: CT threshold of the computed body mask (air vs tissue).
MASK_THRESHOLD_HU = -500.0
MANIFEST = "manifest.json"
SUBJECTS_DIR = "subjects"
SHARDS_DIR = "shards"
SPLITS = ("train", "val", "test")
#: Registration settings (recorded in the manifest).
HISTOGRAM_BINS = 50
SAMPLING_PERCENTAGE = 0.25
SAMPLING_SEED = 20230  # must be non-zero: 0 means "seed from the wall clock" in SimpleITK
SHRINK_FACTORS = (2, 1)
SMOOTHING_SIGMAS_VOXELS = (1.0, 0.0)
MAX_ITERATIONS = 200

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS, its own inverse
_LABEL_FILES = ("lesion", "labels")
_DTYPES = {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "lesion": np.uint8,
           "labels": np.uint8}


class PreprocessError(ValueError):
    """Bad input or arguments for preprocess; the message names the URI/file/field."""


# --------------------------------------------------------------------------- geometry


def nifti_affine(img: sitk.Image) -> np.ndarray:
    """RAS voxel-to-world affine (nibabel convention) of a 3D SimpleITK image.

    SimpleITK works in LPS: ``x_lps = origin + D @ diag(spacing) @ ijk``; NIfTI/nibabel in RAS,
    hence the flip of the first two world axes.

    >>> img = sitk.Image([4, 4, 2], sitk.sitkUInt8); img.SetSpacing((2.0, 2.0, 3.0))
    >>> img.SetOrigin((10.0, 20.0, 30.0))
    >>> nifti_affine(img).tolist()[0], nifti_affine(img).tolist()[2]
    ([-2.0, 0.0, 0.0, -10.0], [0.0, 0.0, 3.0, 30.0])
    """
    d = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = d @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _FLIP @ lps


def to_xyz(img: sitk.Image) -> np.ndarray:
    """Voxel array in nibabel order (X, Y, Z); SimpleITK's own arrays are (Z, Y, X).

    >>> to_xyz(sitk.Image([3, 2, 1], sitk.sitkUInt8)).shape
    (3, 2, 1)
    """
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)))


def _centre(img: sitk.Image) -> np.ndarray:
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2.0 for n in img.GetSize()]))


def target_grid(ct: sitk.Image, spacing: Sequence[float] | None) -> sitk.Image:
    """Reference grid with ``spacing`` over the CT's physical extent (same centre/direction).

    ``size = round(ct_size * ct_spacing / spacing)``; ``spacing=None`` returns ``ct`` itself.

    >>> ct = sitk.Image([48, 48, 24], sitk.sitkInt16); ct.SetSpacing((4.0, 4.0, 6.0))
    >>> ref = target_grid(ct, (6.0, 6.0, 9.0))
    >>> ref.GetSize(), ref.GetSpacing()
    ((32, 32, 16), (6.0, 6.0, 9.0))
    """
    if spacing is None:
        return ct
    sp = np.asarray(spacing, dtype=float)
    size = np.maximum(1, np.rint(np.asarray(ct.GetSize()) * np.asarray(ct.GetSpacing()) / sp))
    d = np.asarray(ct.GetDirection(), dtype=float).reshape(3, 3)
    origin = _centre(ct) - d @ ((size - 1) / 2.0 * sp)
    ref = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    ref.SetSpacing(sp.tolist())
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(ct.GetDirection())
    return ref


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def _resample(img: sitk.Image, ref: sitk.Image, *, transform: sitk.Transform | None = None,
              label: bool = False, default: float = 0.0) -> sitk.Image:
    """``img`` on ``ref``'s grid (float32): linear for images, nearest for masks/labels."""
    if transform is None and _same_grid(img, ref):
        return sitk.Cast(img, sitk.sitkFloat32)
    return sitk.Resample(img, ref, transform or sitk.Euler3DTransform(),
                         sitk.sitkNearestNeighbor if label else sitk.sitkLinear, float(default),
                         sitk.sitkFloat32)


# --------------------------------------------------------------------------- registration


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """ITK's multi-threaded metric sums are order-dependent: run registration on one thread."""
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


def _method(*, sampled: bool) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetNumberOfThreads(1)
    if sampled:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(SAMPLING_PERCENTAGE, SAMPLING_SEED)
    return reg


def mattes_metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes MI of ``moving`` mapped by ``transform`` onto ``fixed``, over all fixed voxels.

    SimpleITK's sign convention: the value is the negative mutual information (lower = better).
    """
    reg = _method(sampled=False)
    reg.SetInitialTransform(sitk.Transform(transform), inPlace=False)
    with _single_threaded():
        return float(reg.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32),
                                        sitk.Cast(moving, sitk.sitkFloat32)))


def _optimise(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> tuple[int, str]:
    """Optimise ``transform`` in place; return (iterations over all levels, stop condition)."""
    reg = _method(sampled=True)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=MAX_ITERATIONS,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-4)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    reg.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_VOXELS))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(transform, inPlace=True)
    count = [0]
    reg.AddCommand(sitk.sitkIterationEvent, lambda: count.__setitem__(0, count[0] + 1))
    with _single_threaded():
        reg.Execute(fixed, moving)
    return count[0], reg.GetOptimizerStopConditionDescription()


def transform_matrix_ras(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix of a matrix+offset transform (Euler3D/Affine): fixed point -> moving point.

    >>> t = sitk.Euler3DTransform(); t.SetTranslation((1.0, 2.0, 3.0))
    >>> transform_matrix_ras(t)[:3, 3].tolist()
    [-1.0, -2.0, 3.0]
    """
    t = sitk.AffineTransform(3) if transform.GetName() == "IdentityTransform" else transform
    a = np.asarray(t.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.asarray(t.GetCenter(), dtype=float)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = np.asarray(t.GetTranslation(), dtype=float) + c - a @ c
    return _FLIP @ m @ _FLIP


def _describe(t: sitk.Transform) -> dict[str, Any]:
    return {"type": t.GetName(), "parameters": list(t.GetParameters()),
            "fixed_parameters": list(t.GetFixedParameters()),
            "matrix_ras": transform_matrix_ras(t).tolist()}


def register_mr_to_ct(ct: sitk.Image, mr: sitk.Image, *,
                      mode: str = "rigid") -> tuple[sitk.Transform, dict[str, Any]]:
    """Register ``mr`` (moving) to ``ct`` (fixed); return the transform to resample the MR with
    and the record ``{mode, metric_before, metric_after, accepted, flag, note, transform,
    iterations, stop_condition, initializer, seconds}`` (metrics: negative Mattes MI, lower is
    better; ``accepted`` false means the solution was worse than the identity, which is kept).

    >>> t, info = register_mr_to_ct(ct, mr)                       # doctest: +SKIP
    >>> info["metric_after"] <= info["metric_before"]             # doctest: +SKIP
    True
    """
    if mode not in REGISTER_MODES:
        raise PreprocessError(f"register: unknown mode {mode!r}, expected one of "
                              f"{', '.join(REGISTER_MODES)}")
    start = time.monotonic()
    fixed, moving = sitk.Cast(ct, sitk.sitkFloat32), sitk.Cast(mr, sitk.sitkFloat32)
    identity = sitk.Euler3DTransform()
    identity.SetCenter(_centre(fixed).tolist())
    before = mattes_metric(fixed, moving, identity)
    info: dict[str, Any] = {
        "mode": mode, "metric": f"mattes_mutual_information({HISTOGRAM_BINS} bins), "
                                "negative MI: lower is better",
        "metric_before": before, "metric_after": before, "accepted": True, "flag": None,
        "transform": _describe(identity), "iterations": 0, "stop_condition": None,
        "initializer": "identity", "note": None}
    if mode == "none":
        info["seconds"] = round(time.monotonic() - start, 3)
        return identity, info

    geometry = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY))
    rigid = sitk.Euler3DTransform(identity)
    if np.linalg.norm(geometry.GetTranslation()) > 1e-6 and \
            mattes_metric(fixed, moving, geometry) < before:
        rigid, info["initializer"] = geometry, "geometry"
    iterations, stop = _optimise(fixed, moving, rigid)
    result: sitk.Transform = rigid
    after = mattes_metric(fixed, moving, rigid)
    if mode == "affine":  # refine the rigid result; keep it only if the metric improves
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        more, affine_stop = _optimise(fixed, moving, affine)
        iterations += more
        affine_metric = mattes_metric(fixed, moving, affine)
        if affine_metric < after:
            result, after, stop = affine, affine_metric, affine_stop
        else:
            info["note"] = (f"affine refinement did not lower the metric ({affine_metric:.6g} "
                            f"vs rigid {after:.6g}); rigid result kept")
    info.update(metric_after=after, iterations=iterations, stop_condition=stop,
                transform=_describe(result))
    if not after <= before:
        info.update(accepted=False, metric_after=before, metric_rejected=after,
                    flag=f"registration rejected: metric at the solution ({after:.6g}) is worse "
                         f"than at the identity ({before:.6g}); identity kept",
                    rejected_transform=info["transform"], transform=_describe(identity))
        result = identity
    info["seconds"] = round(time.monotonic() - start, 3)
    return result, info


# --------------------------------------------------------------------------- one subject


def sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image (float32) from a nibabel-order (X, Y, Z) array and its RAS affine.

    The inverse of :func:`to_xyz` + :func:`nifti_affine`. Sheared affines are refused.

    >>> img = sitk_image(np.zeros((4, 3, 2)), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> img.GetSize(), img.GetSpacing(), img.GetDirection()[0]
    ((4, 3, 2), (2.0, 2.0, 3.0), -1.0)
    """
    lps = _FLIP @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if not np.all(spacing > 0):
        raise PreprocessError(f"affine has a zero-length voxel axis: {affine.tolist()}")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise PreprocessError("affine is sheared (voxel axes not orthogonal); resample it to an "
                              "orthogonal grid first")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0)),
                                                      dtype=np.float32))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection(direction.ravel().tolist())
    return img


def _read(path: Path, what: str) -> sitk.Image:
    """Read NIfTI through nibabel (SimpleITK 2.5 zero-fills a truncated .nii.gz silently)."""
    try:
        vol = load_volume(path, name=what)
    except NiftiError as exc:
        raise PreprocessError(str(exc)) from exc
    try:
        return sitk_image(vol.array, vol.affine)
    except PreprocessError as exc:
        raise PreprocessError(f"{what} file {path}: {exc}") from exc


def preprocess_subject(sid: str, files: dict[str, Path], out_dir: Path, *,
                       spacing: Sequence[float] | None = (3.0, 3.0, 5.0),
                       register: str = "rigid") -> dict[str, Any]:
    """Resample, register, mask and clip one subject; write its NIfTI files into ``out_dir``.

    ``files`` maps ``mr``, ``ct`` (required) and ``mask``, ``lesion``, ``labels`` (optional) to
    local paths. Returns ``{id, shape, spacing, affine, mask_source, registration, written}``
    where ``written`` maps each key to the file written.

    >>> rec = preprocess_subject("s0", {"mr": mr, "ct": ct}, Path("out/s0"))   # doctest: +SKIP
    """
    ct0, mr0 = _read(files["ct"], f"{sid} CT"), _read(files["mr"], f"{sid} MR")
    ref = target_grid(ct0, spacing)
    ct = _resample(ct0, ref, default=HU_CLIP[0])
    transform, reg = register_mr_to_ct(ct, mr0, mode=register)
    mr = _resample(mr0, ref, transform=transform, default=0.0)
    arrays = {"mr": to_xyz(mr), "ct": np.clip(np.rint(to_xyz(ct)), *HU_CLIP)}
    if "mask" in files:
        arrays["mask"] = to_xyz(_resample(_read(files["mask"], f"{sid} mask"), ref, label=True)) > 0
        mask_source = "ingest"
    else:
        arrays["mask"] = body_mask(arrays["ct"], threshold=MASK_THRESHOLD_HU) > 0
        mask_source = f"computed: CT > {MASK_THRESHOLD_HU:g} HU, largest component, holes filled"
    if not arrays["mask"].any():
        raise PreprocessError(f"{sid}: the body mask is empty after resampling ({mask_source})")
    for key in _LABEL_FILES:
        if key in files:
            arrays[key] = np.rint(to_xyz(_resample(_read(files[key], f"{sid} {key}"), ref,
                                                   label=True)))
    affine = nifti_affine(ref)
    written = {key: save_volume(out_dir / f"{key}.nii.gz", arr, affine=affine,
                                dtype=_DTYPES[key]) for key, arr in arrays.items()}
    return {"id": sid, "shape": list(arrays["ct"].shape),
            "spacing": [float(s) for s in ref.GetSpacing()], "affine": affine.tolist(),
            "mask_source": mask_source, "registration": reg, "written": written}


# --------------------------------------------------------------------------- the step


def read_ingest_manifest(input_uri: str) -> dict[str, Any]:
    """Read and validate ``<input_uri>/manifest.json`` from the ingest step.

    Raises :class:`PreprocessError` naming the URI and the missing/wrong field.

    >>> try:
    ...     read_ingest_manifest("/nonexistent/raw")
    ... except PreprocessError as err:
    ...     print(str(err)[:60])
    /nonexistent/raw/manifest.json: cannot read the ingest manif
    """
    uri = storage.join(input_uri, MANIFEST)
    try:
        doc = storage.read_json(uri)
    except storage.StorageError as exc:
        raise PreprocessError(f"{uri}: cannot read the ingest manifest ({exc}); expected the "
                              "output folder of the ingest step") from exc
    if not isinstance(doc, dict):
        raise PreprocessError(f"{uri}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("step") != "ingest":
        raise PreprocessError(f"{uri}: field 'step' is {doc.get('step')!r}, expected 'ingest' "
                              "(preprocess reads the output of the ingest step)")
    for key in ("subjects", "params", "counts", "code_version"):
        if key not in doc:
            raise PreprocessError(f"{uri}: missing field {key!r} of an ingest manifest")
    subjects = doc["subjects"]
    if not isinstance(subjects, list) or not subjects:
        raise PreprocessError(f"{uri}: field 'subjects' must be a non-empty list")
    for i, rec in enumerate(subjects):
        where = f"{uri}: subjects[{i}]"
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not rec["id"]:
            raise PreprocessError(f"{where}: expected an object with a non-empty string 'id'")
        sid = rec["id"]
        if "/" in sid or "\\" in sid or sid in {".", ".."} or sid.startswith("."):
            raise PreprocessError(f"{where}: id {sid!r} is not a valid folder name")
        files = rec.get("files")
        if not isinstance(files, dict) or not all(k in files for k in ("mr", "ct")):
            raise PreprocessError(f"{where} ({sid}): field 'files' must map at least 'mr' and "
                                  "'ct' to relative paths")
        for key, rel in files.items():
            p = PurePosixPath(str(rel))
            if p.is_absolute() or ".." in p.parts:
                raise PreprocessError(f"{where} ({sid}): files.{key} = {rel!r} must be a "
                                      "relative path inside the ingest output")
    if not storage.is_complete(input_uri):
        raise PreprocessError(f"{input_uri}: no {storage.SUCCESS_MARKER} marker: the ingest "
                              "output is incomplete (did the ingest step finish?)")
    return doc


def _input_files(root: Path, rec: dict[str, Any]) -> dict[str, Path]:
    """Local paths of one ingest subject, checked against the recorded sha256."""
    files = {}
    for key, rel in rec["files"].items():
        if key not in _DTYPES:
            continue
        path = root / rel
        if not path.is_file():
            raise PreprocessError(f"{key} file {rel} listed in the ingest manifest is missing")
        want = (rec.get("sha256") or {}).get(key)
        if want and storage.sha256_file(path) != want:
            raise PreprocessError(f"{key} file {rel}: sha256 differs from the ingest manifest "
                                  "(file changed or corrupted since ingest)")
        files[key] = path
    return files


def _check_args(spacing: Sequence[float] | None, register: str, split: Sequence[float],
                inplane: Sequence[int] | None) -> tuple[list[float] | None, list[float],
                                                       tuple[int, int] | None]:
    if register not in REGISTER_MODES:
        raise PreprocessError(f"register: {register!r}, expected one of "
                              f"{', '.join(REGISTER_MODES)}")
    sp = None
    if spacing is not None:
        try:
            sp = [float(s) for s in spacing]
        except (TypeError, ValueError):
            sp = []
        if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
            raise PreprocessError(f"spacing: expected 3 positive numbers in mm or None, "
                                  f"got {spacing!r}")
    try:
        fr = [float(f) for f in split]
    except (TypeError, ValueError):
        fr = []
    if len(fr) != 3 or any(f < 0 or not math.isfinite(f) for f in fr) or sum(fr) <= 0:
        raise PreprocessError(f"split: expected 3 non-negative fractions (train, val, test), "
                              f"got {split!r}")
    ip = None
    if inplane is not None:
        vals = tuple(inplane)
        if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in vals):
            raise PreprocessError(f"inplane: expected 2 positive integers, got {inplane!r}")
        ip = (int(vals[0]), int(vals[1]))
    return sp, fr, ip


def _relativise_index(shard_dir: Path, out_root: Path) -> None:
    """Rewrite the shard index's subject paths relative to the shard directory."""
    idx_path = shard_dir / "index.json"
    index = json.loads(idx_path.read_text())
    for entry in index["subjects"]:
        for key, val in entry["source"].items():
            if isinstance(val, str) and key != "id":
                entry["source"][key] = os.path.relpath(val, shard_dir)
    tmp = idx_path.with_name(".index.json.tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    os.replace(tmp, idx_path)


def run_preprocess(input_uri: str, output_uri: str, *,
                   spacing: Sequence[float] | None = (3.0, 3.0, 5.0), register: str = "rigid",
                   split: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                   inplane: Sequence[int] | None = None) -> dict[str, Any]:
    """Preprocess the ingest output at ``input_uri`` into ``output_uri``; return the manifest.

    Subjects that fail (unreadable, checksum mismatch, empty mask, ...) are listed under
    ``failed`` with the reason and the others go on; no usable subject raises
    :class:`PreprocessError`. Splits are by subject (``split_subjects`` with ``seed``); every
    split is packed with the same in-plane size (``inplane`` or the largest subject's).

    >>> m = run_preprocess("data/raw", "s3://medgan/processed", spacing=None)   # doctest: +SKIP
    """
    sp, fractions, ip = _check_args(spacing, register, split, inplane)
    t0 = time.monotonic()
    ingest = read_ingest_manifest(input_uri)
    manifest_sha = hashlib.sha256(
        storage.read_bytes(storage.join(input_uri, MANIFEST))).hexdigest()
    records: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with storage.local_copy(input_uri) as src, storage.staged_output(output_uri) as out:
        t_sub = time.monotonic()
        for rec in ingest["subjects"]:
            sid = rec["id"]
            try:
                files = _input_files(src, rec)
                res = preprocess_subject(sid, files, out / SUBJECTS_DIR / sid, spacing=sp,
                                         register=register)
            except Exception as exc:  # noqa: BLE001 - one bad subject must not stop the cohort
                log.warning("preprocess: subject %s failed: %s", sid, exc)
                failed.append({"id": sid, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            written = res.pop("written")
            res["files"] = {k: p.relative_to(out).as_posix() for k, p in written.items()}
            res["sha256"] = {k: storage.sha256_file(p) for k, p in written.items()}
            if res["registration"]["flag"]:
                log.warning("preprocess: subject %s: %s", sid, res["registration"]["flag"])
            records.append(res)
        t_sub = time.monotonic() - t_sub
        if not records:
            detail = "; ".join(f"{f['id']}: {f['reason']}" for f in failed)
            raise PreprocessError(f"preprocess {input_uri}: no subject could be processed "
                                  f"({len(failed)} failed): {detail}")
        try:
            splits = split_subjects([r["id"] for r in records], fractions, seed)
        except ValueError as exc:
            raise PreprocessError(f"preprocess {input_uri}: cannot split {len(records)} "
                                  f"subject(s): {exc}") from exc
        by_id = {r["id"]: r for r in records}
        size = ip or (max(r["shape"][0] for r in records), max(r["shape"][1] for r in records))
        t_pack = time.monotonic()
        shards: dict[str, Any] = {}
        for name in SPLITS:
            for sid in splits[name]:
                by_id[sid]["split"] = name
            if not splits[name]:
                continue
            subs = [SubjectFiles(sid, *(str(out / by_id[sid]["files"][k])
                                        for k in ("mr", "ct", "mask")),
                                 *(str(out / by_id[sid]["files"][k]) if k in by_id[sid]["files"]
                                   else None for k in ("lesion", "labels")))
                    for sid in splits[name]]
            shard_dir = out / SHARDS_DIR / name
            index = pack_shards(subs, shard_dir, inplane=tuple(size))
            _relativise_index(shard_dir, out)
            shards[name] = {"path": f"{SHARDS_DIR}/{name}", "n_subjects": len(subs),
                            "n_slices": int(index["n_slices"]),
                            "sha256": {f.name: storage.sha256_file(f)
                                       for f in sorted(shard_dir.iterdir()) if f.is_file()}}
        t_pack = time.monotonic() - t_pack
        reg_ok = [r for r in records if register != "none" and r["registration"]["accepted"]]
        manifest = {
            "step": "preprocess",
            "inputs": {"input_uri": input_uri, "ingest_manifest_sha256": manifest_sha,
                       "ingest_subjects": len(ingest["subjects"]),
                       "ingest_failed": len(ingest.get("failed", [])),
                       "ingest_code_version": ingest["code_version"]},
            "params": {
                "spacing": sp, "register": register, "split": fractions, "seed": int(seed),
                "inplane": list(ip) if ip else None, "hu_clip": list(HU_CLIP),
                "mask_threshold_hu": MASK_THRESHOLD_HU,
                "registration": {
                    "metric": "mattes_mutual_information", "histogram_bins": HISTOGRAM_BINS,
                    "sign": "SimpleITK returns -MI: lower is better",
                    "optimizer": "regular_step_gradient_descent, physical-shift scales",
                    "max_iterations_per_level": MAX_ITERATIONS,
                    "shrink_factors": list(SHRINK_FACTORS),
                    "smoothing_sigmas_voxels": list(SMOOTHING_SIGMAS_VOXELS),
                    "sampling": "random", "sampling_percentage": SAMPLING_PERCENTAGE,
                    "sampling_seed": SAMPLING_SEED, "threads": 1}},
            "outputs": {"subjects_dir": SUBJECTS_DIR, "shards": shards, "inplane": list(size)},
            "splits": splits,
            "subjects": sorted(records, key=lambda r: r["id"]),
            "failed": failed,
            "counts": {"subjects": len(records), "failed": len(failed),
                       **{name: len(splits[name]) for name in SPLITS},
                       "registration_accepted": len(reg_ok),
                       "registration_rejected": sum(not r["registration"]["accepted"]
                                                    for r in records),
                       "computed_masks": sum(r["mask_source"] != "ingest" for r in records)},
            "timings": {"subjects_s": round(t_sub, 3), "pack_s": round(t_pack, 3),
                        "total_s": round(time.monotonic() - t0, 3)},
            "code_version": gan_core.__version__,
        }
        storage.write_json(str(out / MANIFEST), manifest)
    log.info("preprocess %s -> %s: %s", input_uri, output_uri, manifest["counts"])
    return manifest


# --------------------------------------------------------------------------- CLI


def _floats(n: int, what: str, allow_none: bool = False):
    def parse(text: str):
        if allow_none and text.strip().lower() in {"none", "ct", "native"}:
            return None
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            vals = tuple(float(p) for p in parts)
        except ValueError:
            vals = ()
        if len(vals) != n:
            raise argparse.ArgumentTypeError(
                f"{what}: expected {n} comma-separated numbers"
                + (" or 'none'" if allow_none else "") + f", got {text!r}")
        return vals
    return parse


def _ints2(text: str) -> tuple[int, int]:
    try:
        vals = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        vals = ()
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"--inplane: expected H,W like 96,96, got {text!r}")
    return vals  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m components.preprocess`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m components.preprocess",
        description="Resample, register MR->CT (Mattes MI), mask, clip HU, split by subject "
                    "and pack shards from an ingest output.")
    p.add_argument("--input-uri", required=True, help="ingest output (folder or s3://)")
    p.add_argument("--output-uri", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--spacing", type=_floats(3, "--spacing", allow_none=True),
                   default=(3.0, 3.0, 5.0), help="target voxel size mm X,Y,Z, or 'none' to keep "
                                                 "the CT grid (default 3,3,5)")
    p.add_argument("--register", choices=REGISTER_MODES, default="rigid")
    p.add_argument("--split", type=_floats(3, "--split"), default=(0.6, 0.2, 0.2),
                   help="train,val,test fractions (default 0.6,0.2,0.2)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--inplane", type=_ints2, default=None,
                   help="common in-plane shard size H,W (default: the largest subject's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints the counts as JSON; exit status 1 on a clear error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = run_preprocess(args.input_uri, args.output_uri, spacing=args.spacing,
                                  register=args.register, split=args.split, seed=args.seed,
                                  inplane=args.inplane)
    except (PreprocessError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"output_uri": args.output_uri, **manifest["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
