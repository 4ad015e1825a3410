"""One subject of the preprocess step: read, resample, register MR to CT, mask, clip, write.

The geometry and the registration algorithm live in :mod:`gan_core.data.register`; this module
reads and checks one subject's files and writes its NIfTI files; :mod:`components.preprocess`
runs it over a cohort.

Geometry. NIfTI files are read with nibabel (:func:`gan_core.data.nifti.load_volume`, which
rejects truncated files: SimpleITK 2.5 silently zero-fills a truncated ``.nii.gz``) and handled
as SimpleITK images (:func:`gan_core.data.register.sitk_image`). The target grid covers the
CT's physical extent with ``spacing`` (``None`` keeps the CT grid). Written NIfTI files go
through :func:`gan_core.data.nifti.save_volume` (byte-deterministic) with the RAS affine of the
grid, arrays in (X, Y, Z).

Registration (``register="rigid"`` or ``"affine"``; ``"none"`` keeps the scanner alignment):
:func:`gan_core.data.register.register_mr_to_ct`, MR (moving) to the resampled CT (fixed),
Mattes mutual information, single-threaded so a rerun gives identical transforms and
byte-identical files; its record (metrics before/after, ``accepted``, ``flag``, transform) is
kept per subject in the manifest. A subject whose MR and CT cannot be registered (fields of
view that do not overlap) fails with an error naming the subject and both files.

Example:
    >>> rec = preprocess_subject("s0", {"mr": Path("mr.nii.gz"), "ct": Path("ct.nii.gz")},
    ...                          Path("out/s0"), spacing=None)            # doctest: +SKIP
    >>> rec["registration"]["accepted"], sorted(rec["written"])          # doctest: +SKIP
    (True, ['ct', 'mask', 'mr'])
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from components import storage
from components.step import StepInputError
from gan_core.data.masks import body_mask
from gan_core.data.nifti import NiftiError, load_volume, save_volume
from gan_core.data.normalize import CT_MAX, CT_MIN
from gan_core.data.register import (RegistrationError, field_of_view, nifti_affine,
                                    register_mr_to_ct, resample, sitk_image, target_grid, to_xyz)

__all__ = ["HU_CLIP", "MASK_THRESHOLD_HU", "DTYPES", "LABEL_FILES", "read_image",
           "preprocess_subject", "ingest_files", "preprocess_remote_subject"]

#: CT window kept in the output (HU); the same range the normaliser maps to [-1, 1].
HU_CLIP = (float(CT_MIN), float(CT_MAX))
#: CT threshold of the computed body mask (air vs tissue).
MASK_THRESHOLD_HU = -500.0
#: The files a subject may hold and the dtype each is written with (mr and ct are required).
DTYPES = {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "lesion": np.uint8,
          "labels": np.uint8}
#: Label volumes, resampled nearest-neighbour.
LABEL_FILES = ("lesion", "labels")


def read_image(path: Path, what: str) -> sitk.Image:
    """Read NIfTI through nibabel (SimpleITK 2.5 zero-fills a truncated .nii.gz silently)."""
    try:
        vol = load_volume(path, name=what)
    except NiftiError as exc:
        raise StepInputError(str(exc)) from exc
    try:
        return sitk_image(vol.array, vol.affine)
    except RegistrationError as exc:
        raise StepInputError(f"{what} file {path}: {exc}") from exc


def preprocess_subject(sid: str, files: dict[str, Path], out_dir: Path, *,
                       spacing: Sequence[float] | None = (3.0, 3.0, 5.0),
                       register: str = "rigid") -> dict[str, Any]:
    """Resample, register, mask and clip one subject; write its NIfTI files into ``out_dir``.

    ``files`` maps ``mr``, ``ct`` (required) and ``mask``, ``lesion``, ``labels`` (optional) to
    local paths. Returns ``{id, shape, spacing, affine, mask_source, outside_fov_voxels,
    registration, written}`` where ``written`` maps each key to the file written and
    ``outside_fov_voxels`` counts the body voxels the registered MR does not cover
    (:func:`~gan_core.data.register.field_of_view`), removed from the written mask.

    >>> rec = preprocess_subject("s0", {"mr": mr, "ct": ct}, Path("out/s0"))   # doctest: +SKIP
    """
    ct0, mr0 = read_image(files["ct"], f"{sid} CT"), read_image(files["mr"], f"{sid} MR")
    ref = target_grid(ct0, spacing)
    ct = resample(ct0, ref, default=HU_CLIP[0])
    try:
        transform, reg = register_mr_to_ct(ct, mr0, mode=register)
    except RegistrationError as exc:
        raise StepInputError(f"{sid}: cannot register MR file {files['mr']} to CT file "
                              f"{files['ct']}: {exc}") from exc
    mr = resample(mr0, ref, transform=transform, default=0.0)
    arrays = {"mr": to_xyz(mr), "ct": np.clip(np.rint(to_xyz(ct)), *HU_CLIP)}
    if "mask" in files:
        arrays["mask"] = to_xyz(resample(read_image(files["mask"], f"{sid} mask"), ref, label=True)) > 0
        mask_source = "ingest"
    else:
        arrays["mask"] = body_mask(arrays["ct"], threshold=MASK_THRESHOLD_HU) > 0
        mask_source = f"computed: CT > {MASK_THRESHOLD_HU:g} HU, largest component, holes filled"
    outside_fov = arrays["mask"] & ~field_of_view(mr0, ref, transform)
    arrays["mask"] &= ~outside_fov  # no MR data there: neither trained on nor scored
    if not arrays["mask"].any():
        raise StepInputError(f"{sid}: the body mask is empty after resampling ({mask_source}) "
                             "and removing the voxels outside the MR's field of view")
    for key in LABEL_FILES:
        if key in files:
            arrays[key] = np.rint(to_xyz(resample(read_image(files[key], f"{sid} {key}"), ref,
                                                   label=True)))
    affine = nifti_affine(ref)
    written = {key: save_volume(out_dir / f"{key}.nii.gz", arr, affine=affine,
                                dtype=DTYPES[key]) for key, arr in arrays.items()}
    return {"id": sid, "shape": list(arrays["ct"].shape),
            "spacing": [float(s) for s in ref.GetSpacing()], "affine": affine.tolist(),
            "mask_source": mask_source, "outside_fov_voxels": int(outside_fov.sum()),
            "registration": reg, "written": written}


def ingest_files(root: Path, rec: dict[str, Any]) -> dict[str, Path]:
    """Local paths (under ``root``, the ingest output) of one ingest manifest subject record
    ``rec``, each checked against the sha256 the manifest records; files that are not one of
    :data:`DTYPES` are left out. A missing or changed file raises
    :class:`~components.step.StepInputError` naming it."""
    files = {}
    for key, rel in rec["files"].items():
        if key not in DTYPES:
            continue
        path = root / rel
        if not path.is_file():
            raise StepInputError(f"{key} file {rel} listed in the ingest manifest is missing")
        want = (rec.get("sha256") or {}).get(key)
        if want and storage.sha256_file(path) != want:
            raise StepInputError(f"{key} file {rel}: sha256 differs from the ingest manifest "
                                 "(file changed or corrupted since ingest)")
        files[key] = path
    return files


def preprocess_remote_subject(rec: dict[str, Any], input_uri: str, *,
                              spacing: Sequence[float] | None = (3.0, 3.0, 5.0),
                              register: str = "rigid") -> dict[str, Any]:
    """One subject anywhere (a Ray task on any node): fetch ONLY its files from the ingest
    output ``input_uri`` (folder or ``s3://``), check them (:func:`ingest_files`), run
    :func:`preprocess_subject` in a temporary folder and return its record with
    ``data = {key: (file name, bytes)}`` instead of ``written`` (the caller writes them where
    the step's output is staged). A failure is returned, not raised, as
    ``{"id", "error": "<Type>: <message>"}``: the same reason the in-process path records.

    >>> r = preprocess_remote_subject(ingest_manifest["subjects"][0], "s3://b/raw",
    ...                               spacing=None)                         # doctest: +SKIP
    >>> sorted(r["data"])                                                   # doctest: +SKIP
    ['ct', 'mask', 'mr']
    """
    sid = rec["id"]
    try:
        with tempfile.TemporaryDirectory(prefix="medgan-prep-") as d:
            src = Path(d) / "in"
            for key, rel in rec["files"].items():
                if key not in DTYPES:
                    continue
                dst = src / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    dst.write_bytes(storage.read_bytes(storage.join(input_uri, rel)))
                except storage.StorageNotFoundError:
                    pass  # ingest_files names the missing file
            files = ingest_files(src, rec)
            res = preprocess_subject(sid, files, Path(d) / "out" / sid, spacing=spacing,
                                     register=register)
            written = res.pop("written")
            res["data"] = {k: (f.name, f.read_bytes()) for k, f in written.items()}
            return res
    except Exception as exc:  # noqa: BLE001 - reported per subject, the others go on
        return {"id": sid, "error": f"{type(exc).__name__}: {exc}"}
