"""NIfTI volume I/O with clear errors and deterministic, atomic writes.

Arrays keep nibabel's voxel order (X, Y, Z); axial slices run along the last axis.
``save_volume`` writes byte-identical ``.nii.gz`` files for identical input (the gzip mtime is 0)
and never leaves a half-written file under the final name.

>>> import numpy as np, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = save_volume(d / "ct.nii.gz", np.zeros((4, 4, 2)), affine=np.diag([1.0, 1.0, 2.5, 1.0]),
...                 dtype=np.int16)
>>> vol = load_volume(p)
>>> vol.array.shape, vol.spacing
((4, 4, 2), (1.0, 1.0, 2.5))
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["NiftiError", "Volume", "load_volume", "save_volume", "check_same_grid"]

#: qform/sform code for images made here without a template ("scanner anatomical").
_DEFAULT_XFORM_CODE = 1


class NiftiError(ValueError):
    """A NIfTI file is missing, unreadable, malformed, or does not match what was expected."""


@dataclass
class Volume:
    """A 3D image: voxel array (X, Y, Z) plus its voxel-to-world affine and original header.

    >>> v = Volume(np.zeros((2, 2, 2), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]), None, None)
    >>> v.spacing
    (2.0, 2.0, 3.0)
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm: the header zooms if there is a header, else the affine's column norms."""
        if self.header is not None:
            zooms = self.header.get_zooms()[:3]
            if len(zooms) == 3 and all(z > 0 for z in zooms):
                return tuple(float(z) for z in zooms)  # type: ignore[return-value]
        norms = np.linalg.norm(np.asarray(self.affine, dtype=float)[:3, :3], axis=0)
        return tuple(float(n) for n in norms)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (X, Y, Z)."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


def _label(path: Path, name: str | None) -> str:
    return f"{name} file {path}" if name else f"NIfTI file {path}"


def load_volume(path: str | os.PathLike, *, dtype: np.dtype | type = np.float32,
                name: str | None = None) -> Volume:
    """Read a 3D NIfTI volume (``.nii`` or ``.nii.gz``) as ``dtype``.

    A 4D image whose last dimension is 1 is squeezed to 3D. Raises :class:`NiftiError` naming the
    file (prefixed by ``name``, e.g. ``"CT"``) when it is missing, not NIfTI, truncated, not 3D, or
    holds NaN/Inf values.

    >>> try:
    ...     load_volume("/nonexistent/ct.nii.gz", name="CT")
    ... except NiftiError as err:
    ...     print(err)
    CT file /nonexistent/ct.nii.gz does not exist
    """
    path = Path(path)
    label = _label(path, name)
    if not path.exists():
        raise NiftiError(f"{label} does not exist")
    if not path.is_file():
        raise NiftiError(f"{label} is not a regular file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, OSError, EOFError, ...)
        raise NiftiError(f"{label} could not be read as NIfTI: {type(exc).__name__}: {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{label} is a {type(img).__name__}, expected a NIfTI-1/2 image")
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip -> EOFError/zlib.error/OSError, short file -> ValueError
        raise NiftiError(
            f"{label} is truncated or corrupt (reading the voxel data failed: "
            f"{type(exc).__name__}: {exc})") from exc
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise NiftiError(f"{label} has data of shape {tuple(raw.shape)}, expected a 3D volume "
                         "(X, Y, Z) or 4D with a last dimension of 1")
    array = np.ascontiguousarray(raw, dtype=dtype)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NiftiError(f"{label} contains {bad} NaN/Inf voxel(s) out of {array.size}, "
                             "expected finite values")
    header = img.header.copy()
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), header=header,
                  path=path)


def _cast(array: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """Cast to ``dtype``; integers are rounded and must fit (no silent wrap-around)."""
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise NiftiError(f"cannot write {path} as {dtype}: the array holds NaN/Inf values")
        array = np.rint(array)
    if np.issubdtype(dtype, np.integer) and array.size:
        info = np.iinfo(dtype)
        lo, hi = float(array.min()), float(array.max())
        if lo < info.min or hi > info.max:
            raise NiftiError(f"cannot write {path} as {dtype}: values span [{lo:g}, {hi:g}], "
                             f"outside the type's range [{info.min}, {info.max}]")
    return np.ascontiguousarray(array, dtype=dtype)


def save_volume(path: str | os.PathLike, array: np.ndarray, *, affine: np.ndarray | None = None,
                like: Volume | None = None, dtype: np.dtype | type | None = None) -> Path:
    """Write ``array`` (X, Y, Z) as NIfTI-1 to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    The affine is ``affine``, else ``like.affine``, else the identity. With ``like`` its header is
    copied (units, qform/sform codes, description...). ``dtype`` defaults to the array's dtype
    (bool becomes uint8, float64 becomes float32); integer targets are rounded and range-checked.
    The same input always gives byte-identical files. Returns the path written.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "mask.nii.gz"
    >>> save_volume(p, np.ones((2, 2, 2), bool)).name
    'mask.nii.gz'
    """
    path = Path(path)
    name = path.name
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise NiftiError(f"cannot write {path}: the name must end in .nii or .nii.gz")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise NiftiError(f"cannot write {path}: array shape {arr.shape}, expected a 3D volume")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    target = np.dtype(dtype) if dtype is not None else arr.dtype
    if target == np.float64 and dtype is None:
        target = np.dtype(np.float32)
    arr = _cast(arr, target, path)

    if affine is None:
        affine = like.affine if like is not None else np.eye(4)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise NiftiError(f"cannot write {path}: the affine must be a finite 4x4 matrix, "
                         f"got shape {affine.shape}")

    if like is not None and like.header is not None:
        header = nib.Nifti1Header.from_header(like.header)
        qcode = int(header["qform_code"]) or _DEFAULT_XFORM_CODE
        scode = int(header["sform_code"]) or _DEFAULT_XFORM_CODE
    else:
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm", "sec")
        qcode = scode = _DEFAULT_XFORM_CODE
    img = nib.Nifti1Image(arr, affine, header)
    img.set_data_dtype(target)
    img.header.set_slope_inter(1.0, 0.0)  # data are stored as given: no scaling
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    img.header["cal_min"] = 0.0  # a template's display range may not fit the new data
    img.header["cal_max"] = 0.0
    data = img.to_bytes()
    if name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_same_grid(a: Volume, b: Volume, *, names: tuple[str, str] = ("MR", "CT"),
                    atol: float = 1e-3) -> None:
    """Raise :class:`NiftiError` unless ``a`` and ``b`` have the same shape and affine (``atol`` mm).

    >>> v = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
    >>> check_same_grid(v, v)
    """
    def desc(v: Volume, n: str) -> str:
        sp = ", ".join(f"{s:g}" for s in v.spacing)
        where = v.path if v.path is not None else "<in memory>"
        return f"{n} {where}: shape {v.shape}, spacing ({sp}) mm"

    same_shape = a.array.shape == b.array.shape
    same_affine = np.allclose(np.asarray(a.affine, float), np.asarray(b.affine, float),
                              atol=atol, rtol=0.0)
    if same_shape and same_affine:
        return
    what = "shapes" if not same_shape else "affines"
    if not same_shape and not same_affine:
        what = "shapes and affines"
    msg = f"{names[0]} and {names[1]} are not on the same voxel grid ({what} differ): " \
          f"{desc(a, names[0])}; {desc(b, names[1])}"
    if not same_affine:
        diff = float(np.max(np.abs(np.asarray(a.affine, float) - np.asarray(b.affine, float))))
        msg += f"; largest affine difference {diff:g} (tolerance {atol:g})"
    raise NiftiError(msg)
