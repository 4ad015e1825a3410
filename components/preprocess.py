"""Pipeline step ``preprocess``: resample, register MR to CT, mask, clip, split, pack shards.

The geometry and the registration algorithm live in :mod:`gan_core.data.register`; this step
reads and checks the files, runs it per subject, writes NIfTI files, packs the shards
(:func:`gan_core.data.pack.pack_splits`: all splits published together or none) and records
the manifest.

Reads an ``ingest`` output (``<in>/manifest.json`` + ``<in>/subjects/...``) and writes::

    <out>/subjects/<id>/mr.nii.gz     MR (float32) registered to and resampled on the CT grid
    <out>/subjects/<id>/ct.nii.gz     CT (int16 HU) resampled to ``spacing``, clipped to
                                      [-1024, 3000]
    <out>/subjects/<id>/mask.nii.gz   body mask (uint8): the ingest mask, else computed from the CT
    <out>/subjects/<id>/lesion.nii.gz, labels.nii.gz   when the ingest had them (nearest neighbour)
    <out>/shards/{train,val,test}/    gan_core.data.pack.pack_splits (split by subject)
    <out>/manifest.json               step "preprocess": splits, per-subject registration and
                                      sha256, shard checksums, failed subjects, counts, timings

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
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import SimpleITK as sitk

import gan_core
from components import storage
from gan_core.data.masks import body_mask
from gan_core.data.nifti import NiftiError, load_volume, save_volume
from gan_core.data.normalize import CT_MAX, CT_MIN
from gan_core.data.pack import SPLITS, pack_splits
from gan_core.data.register import (
    REGISTER_MODES,
    RegistrationError,
    nifti_affine,
    register_mr_to_ct,
    registration_settings,
    resample,
    sitk_image,
    target_grid,
    to_xyz,
)
from gan_core.data.shards import SubjectFiles, split_subjects

__all__ = [
    "HU_CLIP", "MASK_THRESHOLD_HU", "PreprocessError",
    "preprocess_subject", "read_ingest_manifest", "run_preprocess", "main",
]

log = logging.getLogger(__name__)

#: CT window kept in the output (HU); the same range the normaliser maps to [-1, 1].
HU_CLIP = (float(CT_MIN), float(CT_MAX))
#: CT threshold of the computed body mask (air vs tissue).
MASK_THRESHOLD_HU = -500.0
MANIFEST = "manifest.json"
SUBJECTS_DIR = "subjects"
SHARDS_DIR = "shards"
_LABEL_FILES = ("lesion", "labels")
_DTYPES = {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "lesion": np.uint8,
           "labels": np.uint8}


class PreprocessError(ValueError):
    """Bad input or arguments for preprocess; the message names the URI/file/field."""


# --------------------------------------------------------------------------- one subject


def _read(path: Path, what: str) -> sitk.Image:
    """Read NIfTI through nibabel (SimpleITK 2.5 zero-fills a truncated .nii.gz silently)."""
    try:
        vol = load_volume(path, name=what)
    except NiftiError as exc:
        raise PreprocessError(str(exc)) from exc
    try:
        return sitk_image(vol.array, vol.affine)
    except RegistrationError as exc:
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
    ct = resample(ct0, ref, default=HU_CLIP[0])
    try:
        transform, reg = register_mr_to_ct(ct, mr0, mode=register)
    except RegistrationError as exc:
        raise PreprocessError(f"{sid}: cannot register MR file {files['mr']} to CT file "
                              f"{files['ct']}: {exc}") from exc
    mr = resample(mr0, ref, transform=transform, default=0.0)
    arrays = {"mr": to_xyz(mr), "ct": np.clip(np.rint(to_xyz(ct)), *HU_CLIP)}
    if "mask" in files:
        arrays["mask"] = to_xyz(resample(_read(files["mask"], f"{sid} mask"), ref, label=True)) > 0
        mask_source = "ingest"
    else:
        arrays["mask"] = body_mask(arrays["ct"], threshold=MASK_THRESHOLD_HU) > 0
        mask_source = f"computed: CT > {MASK_THRESHOLD_HU:g} HU, largest component, holes filled"
    if not arrays["mask"].any():
        raise PreprocessError(f"{sid}: the body mask is empty after resampling ({mask_source})")
    for key in _LABEL_FILES:
        if key in files:
            arrays[key] = np.rint(to_xyz(resample(_read(files[key], f"{sid} {key}"), ref,
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
        for name in SPLITS:
            for sid in splits[name]:
                by_id[sid]["split"] = name

        def files_of(sid: str) -> SubjectFiles:
            f = by_id[sid]["files"]
            return SubjectFiles(sid, *(str(out / f[k]) for k in ("mr", "ct", "mask")),
                                *(str(out / f[k]) if k in f else None for k in ("lesion", "labels")))

        indexes = pack_splits({name: [files_of(sid) for sid in splits[name]] for name in SPLITS},
                              out / SHARDS_DIR, inplane=tuple(size))
        shards: dict[str, Any] = {}
        for name, index in indexes.items():
            shard_dir = out / SHARDS_DIR / name
            shards[name] = {"path": f"{SHARDS_DIR}/{name}", "n_subjects": len(splits[name]),
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
                "registration": registration_settings()},
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
