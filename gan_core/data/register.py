"""MR-to-CT registration and resampling with SimpleITK (the algorithm only: no files, no manifests).

Geometry. Images are SimpleITK images (LPS world coordinates); :func:`sitk_image` builds one from
a nibabel-order ``(X, Y, Z)`` array and its RAS affine, :func:`to_xyz` and :func:`nifti_affine`
go back. :func:`target_grid` covers the CT's physical extent, centred on the CT's centre, with a
new ``spacing``; :func:`resample` puts an image on a grid (linear, nearest for labels).

Registration (:func:`register_mr_to_ct`, ``mode="rigid"`` or ``"affine"``; ``"none"`` keeps the
scanner alignment): MR (moving) to CT (fixed), Mattes mutual information (50 bins),
regular-step gradient descent with physical-shift scales, 2 levels (shrink 2, 1; smoothing 1, 0
voxels), random 25 % sampling with a fixed seed, started from the better of the identity and a
geometry-centred initialisation; ``affine`` refines the rigid result and is kept only if it
lowers the metric (else the rigid result, with a ``note``). It runs single-threaded, so a rerun
gives identical transforms. ``metric_before``/``metric_after`` are the Mattes MI values (all
voxels) at the identity and at the solution; SimpleITK returns the *negative* mutual
information, so **lower is better**. A solution worse than the identity is rejected (identity
kept, ``accepted: false`` and a ``flag``). ``transform.matrix_ras`` maps a CT world point (RAS
mm) to the MR world point showing the same anatomy. MR and CT whose fields of view do not
overlap raise :class:`RegistrationError` with both extents (not ITK's raw exception).

Field of view. Resampling the registered MR onto the CT grid leaves the grid voxels that map
outside the MR's voxel box without MR data (filled with the resample default, e.g. a diagonal
wedge after a rotation). :func:`field_of_view` marks the voxels that DO map inside it; the
preprocess step removes the others from the body mask, so they are neither trained on nor
scored, and counts them.

Example:
    >>> ct = sitk_image(np.zeros((8, 8, 4)), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> ref = target_grid(ct, (4.0, 4.0, 6.0))
    >>> ref.GetSize(), to_xyz(resample(ct, ref)).shape
    ((4, 4, 2), (4, 4, 2))
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = [
    "REGISTER_MODES", "RegistrationError", "registration_settings", "nifti_affine", "to_xyz",
    "sitk_image", "target_grid", "resample", "mattes_metric", "register_mr_to_ct",
    "transform_matrix_ras", "world_extent", "field_of_view",
]

REGISTER_MODES = ("none", "rigid", "affine")
#: Registration settings (recorded in the manifest).
HISTOGRAM_BINS = 50
SAMPLING_PERCENTAGE = 0.25
SAMPLING_SEED = 20230  # must be non-zero: 0 means "seed from the wall clock" in SimpleITK
SHRINK_FACTORS = (2, 1)
SMOOTHING_SIGMAS_VOXELS = (1.0, 0.0)
MAX_ITERATIONS = 200

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS, its own inverse


class RegistrationError(ValueError):
    """Images that cannot be registered or converted (no overlap, sheared affine, bad mode)."""


def registration_settings() -> dict[str, Any]:
    """The fixed settings of :func:`register_mr_to_ct`, as recorded in a manifest."""
    return {
        "metric": "mattes_mutual_information", "histogram_bins": HISTOGRAM_BINS,
        "sign": "SimpleITK returns -MI: lower is better",
        "optimizer": "regular_step_gradient_descent, physical-shift scales",
        "max_iterations_per_level": MAX_ITERATIONS,
        "shrink_factors": list(SHRINK_FACTORS),
        "smoothing_sigmas_voxels": list(SMOOTHING_SIGMAS_VOXELS),
        "sampling": "random", "sampling_percentage": SAMPLING_PERCENTAGE,
        "sampling_seed": SAMPLING_SEED, "threads": 1}


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


def world_extent(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest RAS world coordinates (mm) of the image's voxel-centre box.

    >>> lo, hi = world_extent(sitk_image(np.zeros((4, 3, 2)), np.diag([2.0, 2.0, 3.0, 1.0])))
    >>> lo.tolist(), hi.tolist()
    ([0.0, 0.0, 0.0], [6.0, 4.0, 3.0])
    """
    size = img.GetSize()
    corners = np.array([img.TransformContinuousIndexToPhysicalPoint(
        [c * (n - 1) for c, n in zip(corner, size)])
        for corner in np.ndindex(2, 2, 2)], dtype=float)
    corners[:, :2] *= -1  # LPS -> RAS
    return corners.min(0) + 0.0, corners.max(0) + 0.0  # + 0.0: no -0.0


def _span(img: sitk.Image) -> str:
    lo, hi = world_extent(img)
    return " x ".join(f"[{a:.1f}, {b:.1f}]" for a, b in zip(lo, hi))


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


def resample(img: sitk.Image, ref: sitk.Image, *, transform: sitk.Transform | None = None,
             label: bool = False, default: float = 0.0) -> sitk.Image:
    """``img`` on ``ref``'s grid (float32): linear for images, nearest for masks/labels."""
    if transform is None and _same_grid(img, ref):
        return sitk.Cast(img, sitk.sitkFloat32)
    return sitk.Resample(img, ref, transform or sitk.Euler3DTransform(),
                         sitk.sitkNearestNeighbor if label else sitk.sitkLinear, float(default),
                         sitk.sitkFloat32)


def field_of_view(moving: sitk.Image, ref: sitk.Image,
                  transform: sitk.Transform | None = None) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` array on ``ref``'s grid: True where a voxel, mapped by ``transform``
    (ref point -> moving point, as in :func:`resample`), falls inside ``moving``'s voxel box —
    exactly the voxels :func:`resample` fills from ``moving`` rather than with its default.

    >>> mr = sitk_image(np.ones((4, 4, 2)), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> shift = sitk.TranslationTransform(3, (4.0, 0.0, 0.0))  # 2 voxels along LPS x
    >>> int((~field_of_view(mr, mr, shift)).sum())            # 2 columns x 4 rows x 2 slices
    16
    """
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, ref, transform or sitk.Euler3DTransform(),
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return to_xyz(inside) > 0


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
        raise RegistrationError(f"affine has a zero-length voxel axis: {affine.tolist()}")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise RegistrationError("affine is sheared (voxel axes not orthogonal); resample it to "
                                "an orthogonal grid first")
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0)),
                                                      dtype=np.float32))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection(direction.ravel().tolist())
    return img


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


def _itk_reason(exc: BaseException) -> str:
    """The gist of a SimpleITK exception (its text after ``ITK ERROR: <class>(<address>):``)."""
    text = " ".join(str(exc).split())
    if "ITK ERROR:" in text:
        text = text.split("ITK ERROR:", 1)[1]
        text = text.split("): ", 1)[1] if "): " in text else text
    return text.strip()[:300]


def register_mr_to_ct(ct: sitk.Image, mr: sitk.Image, *,
                      mode: str = "rigid") -> tuple[sitk.Transform, dict[str, Any]]:
    """Register ``mr`` (moving) to ``ct`` (fixed); return the transform to resample the MR with
    and the record ``{mode, metric_before, metric_after, accepted, flag, note, transform,
    iterations, stop_condition, initializer, seconds}`` (metrics: negative Mattes MI, lower is
    better; ``accepted`` false means the solution was worse than the identity, which is kept).

    Raises :class:`RegistrationError` naming both fields of view when ITK cannot evaluate the
    metric (typically: MR and CT do not overlap in world coordinates).

    >>> t, info = register_mr_to_ct(ct, mr)                       # doctest: +SKIP
    >>> info["metric_after"] <= info["metric_before"]             # doctest: +SKIP
    True
    """
    if mode not in REGISTER_MODES:
        raise RegistrationError(f"register: unknown mode {mode!r}, expected one of "
                                f"{', '.join(REGISTER_MODES)}")
    fixed, moving = sitk.Cast(ct, sitk.sitkFloat32), sitk.Cast(mr, sitk.sitkFloat32)
    try:
        return _register(fixed, moving, mode)
    except RuntimeError as exc:  # SimpleITK turns every ITK exception into a RuntimeError
        raise RegistrationError(
            f"ITK could not register the MR to the CT ({_itk_reason(exc)}); expected MR and CT "
            f"volumes with overlapping fields of view, got CT {_span(fixed)} mm and MR "
            f"{_span(moving)} mm (RAS world extents)") from exc


def _register(fixed: sitk.Image, moving: sitk.Image,
              mode: str) -> tuple[sitk.Transform, dict[str, Any]]:
    start = time.monotonic()
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

