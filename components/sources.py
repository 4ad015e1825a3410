"""The cohort sources of the ingest step: the digital phantom, a SynthRAD-layout folder, TCIA.

Each source writes its subjects into ``<out>/subjects/<id>/{mr,ct}.nii.gz`` (plus ``mask``,
``labels``, ``lesion`` where it has them) and returns ``(records, failed, extra)``: one
manifest record per written subject (``id``, relative ``files``, their ``sha256``, ``source``,
``notes``), the subjects it could not use (``id`` + ``reason``) and the source's own
``outputs`` fields. No usable subject raises :class:`~components.step.StepInputError` naming
the source and every failure. :mod:`components.ingest` runs one of them and writes the
manifest.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> records, failed, extra = ingest_phantom(out, subjects=1, seed=0, shape=(32, 32, 16),
    ...                                         spacing=(6.0, 6.0, 9.0), lesion_prevalence=0.0,
    ...                                         misalign_mm=0.0)
    >>> records[0]["files"]["mr"], failed, extra
    ('subjects/phantom_000/mr.nii.gz', [], {'phantom_cohort': 'subjects/cohort.json'})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components import storage
from components.mlflow_utils import redact_uri
from components.step import StepInputError
from gan_core.data.nifti import NiftiError, Volume, check_same_grid, load_volume

__all__ = ["SUBJECTS_DIR", "TCIA_CACHE", "REQUIRED", "OPTIONAL", "Ingested", "ingest_phantom",
           "ingest_folder", "ingest_tcia"]

log = logging.getLogger(__name__)

#: Folder (relative to the output) holding one folder per subject.
SUBJECTS_DIR = "subjects"
#: TCIA working folder inside a local output (resume cache).
TCIA_CACHE = ".tcia_cache"
#: Files a subject may hold; mr and ct are required.
REQUIRED = ("mr", "ct")
OPTIONAL = ("mask", "labels", "lesion")

#: What a source returns: ``(records, failed, extra outputs)``.
Ingested = tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]


# --------------------------------------------------------------------------- helpers


def _record(sid: str, subject_dir: Path, out_root: Path, source: dict[str, Any],
            notes: list[str]) -> dict[str, Any]:
    """Manifest entry of one written subject: relative files and their sha256."""
    files, sums = {}, {}
    for key in (*REQUIRED, *OPTIONAL):
        p = subject_dir / f"{key}.nii.gz"
        if p.exists():
            files[key] = p.relative_to(out_root).as_posix()
            sums[key] = storage.sha256_file(p)
    return {"id": sid, "files": files, "sha256": sums, "source": source, "notes": notes}


def _copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name (no half-written file under ``dst``)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _grid_note(v: Volume) -> str:
    return f"shape {list(v.shape)}, spacing {[round(s, 4) for s in v.spacing]} mm"


# --------------------------------------------------------------------------- phantom


def ingest_phantom(out: Path, *, subjects: int, seed: int, shape: Sequence[int],
                    spacing: Sequence[float], lesion_prevalence: float,
                    misalign_mm: float) -> Ingested:
    """The digital head phantom (:func:`gan_core.data.phantom.write_cohort`) written into
    ``out/subjects``; its ``cohort.json`` is kept there."""
    from gan_core.data.phantom import write_cohort

    root = out / SUBJECTS_DIR
    try:
        dirs = write_cohort(root, subjects=subjects, seed=seed, shape=tuple(shape),
                            spacing=tuple(spacing), lesion_prevalence=lesion_prevalence,
                            misalign_mm=misalign_mm)
    except ValueError as exc:
        raise StepInputError(f"phantom ingest: {exc}") from exc
    cohort = json.loads((root / "cohort.json").read_text())
    seeds = {r["id"]: r["subject_seed"] for r in cohort["subjects"]}
    records = [_record(d.name, d, out, {"kind": "phantom", "subject_seed": seeds[d.name]}, [])
               for d in dirs]
    extra = {"phantom_cohort": f"{SUBJECTS_DIR}/cohort.json"}
    return records, [], extra


# --------------------------------------------------------------------------- folder


def _validate_subject(d: Path) -> tuple[dict[str, Path], list[str]]:
    """Check one SynthRAD-layout subject folder; return its files and notes.

    Raises :class:`StepInputError` (the reason) when the subject cannot be used.
    """
    missing = [k for k in REQUIRED if not (d / f"{k}.nii.gz").is_file()]
    if missing:
        raise StepInputError(f"missing {', '.join(f'{k}.nii.gz' for k in missing)} "
                          "(expected mr.nii.gz and ct.nii.gz)")
    files = {k: d / f"{k}.nii.gz" for k in REQUIRED}
    files.update({k: d / f"{k}.nii.gz" for k in OPTIONAL if (d / f"{k}.nii.gz").is_file()})
    try:
        vols = {k: load_volume(p, name=k.upper() if k in REQUIRED else k) for k, p in files.items()}
        for k in ("mr", *OPTIONAL):
            if k in vols:
                check_same_grid(vols[k], vols["ct"], names=(k.upper() if k == "mr" else k, "CT"))
    except NiftiError as exc:
        raise StepInputError(str(exc)) from exc
    notes = [f"CT {_grid_note(vols['ct'])}"]
    if "mask" in vols:
        if not np.any(vols["mask"].array > 0):
            raise StepInputError(f"mask file {files['mask']} is empty (no voxel > 0)")
    else:
        notes.append("no mask.nii.gz: preprocess computes a body mask from the CT")
    return files, notes


def _folder_subjects(out: Path, folder: str, root: Path) -> tuple[list[dict], list[dict]]:
    if not root.is_dir():
        raise StepInputError(f"folder ingest: {folder} is not a directory (expected a "
                          "SynthRAD-layout root <root>/<subject>/mr.nii.gz, ct.nii.gz)")
    records: list[dict] = []
    failed: list[dict] = []
    candidates = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
                  and ((d / "mr.nii.gz").exists() or (d / "ct.nii.gz").exists())]
    for d in candidates:
        try:
            files, notes = _validate_subject(d)
        except StepInputError as exc:
            log.warning("folder ingest: subject %s skipped: %s", d.name, exc)
            failed.append({"id": d.name, "reason": str(exc)})
            continue
        target = out / SUBJECTS_DIR / d.name
        for key, src in files.items():
            _copy(src, target / f"{key}.nii.gz")
        records.append(_record(d.name, target, out,
                               {"kind": "folder", "path": storage.join(folder, d.name)}, notes))
    if not records:
        detail = "; ".join(f"{f['id']}: {f['reason']}" for f in failed) or \
            "no <subject>/mr.nii.gz or ct.nii.gz found"
        raise StepInputError(f"folder ingest: no valid subject under {folder} "
                          f"({len(failed)} failed): {detail}")
    return records, failed


def ingest_folder(out: Path, folder: str) -> Ingested:
    """The valid subjects of the SynthRAD-layout root ``folder`` (local or ``s3://``) copied
    into ``out/subjects``; the others are listed under ``failed`` with the reason."""
    with contextlib.ExitStack() as stack:
        try:
            root = stack.enter_context(storage.local_copy(folder))
        except storage.StorageError as exc:
            raise StepInputError(f"folder ingest: cannot read {folder}: {exc}") from exc
        records, failed = _folder_subjects(out, folder, root)
    return records, failed, {}


# --------------------------------------------------------------------------- tcia


def _tcia_cache(output_uri: str, collection: str, cache_dir: str | None) -> tuple[Path, bool]:
    """The TCIA working folder and whether it lives inside the (local) output."""
    if cache_dir:
        return Path(cache_dir), False
    if not storage.is_s3(output_uri):
        return Path(storage.join(output_uri, TCIA_CACHE)), True
    key = hashlib.sha256(f"{output_uri}\0{collection}".encode()).hexdigest()[:16]
    base = os.environ.get("MEDGAN_CACHE_DIR")
    root = Path(base) / "tcia" if base else Path(tempfile.gettempdir()) / "medgan-tcia-cache"
    return root / key, False


def ingest_tcia(out: Path, output_uri: str, *, collection: str | None,
                 modalities: Sequence[str], patient_ids: Sequence[str] | None,
                 base_url: str | None, cache_dir: str | None) -> Ingested:
    """The MR+CT pairs of an NBIA v4 collection (:func:`components.tcia.ingest_tcia`) into
    ``out/subjects``; failed series and unpaired patients go under ``failed``. The working
    folder (resume cache) is ``cache_dir``, else ``out/.tcia_cache`` for a local
    ``output_uri`` (kept with the output), else a per-machine folder (module
    :mod:`components.ingest` doc)."""
    from components import tcia

    if not collection:
        raise StepInputError("tcia ingest: a collection is required (--collection NAME)")
    work, inside = _tcia_cache(output_uri, collection, cache_dir)
    work.mkdir(parents=True, exist_ok=True)
    url = redact_uri(base_url) or tcia.DEFAULT_BASE_URL
    try:
        tm = tcia.ingest_tcia(work, collection=collection, modalities=tuple(modalities),
                              patient_ids=patient_ids, base_url=base_url or tcia.DEFAULT_BASE_URL)
    except (tcia.NbiaError, ValueError) as exc:
        raise StepInputError(f"tcia ingest: collection {collection!r} at {url}: {exc}") from exc
    bad_series: dict[str, list[dict]] = {}
    for uid, entry in sorted(tm["series"].items()):
        if entry.get("status") != "ok":
            bad_series.setdefault(str(entry.get("patient_id", "unknown")), []).append(
                {"series": uid, "modality": entry.get("modality"),
                 "error": entry.get("error", "unknown error")})
    records: list[dict] = []
    failed: list[dict] = [
        {"id": tcia._safe_name(u["patient"]), "patient_id": u["patient"],
         "reason": f"unpaired: no usable {' or '.join(u['missing'])} series"
                   + (f" ({len(bad_series.get(u['patient'], []))} series failed)"
                      if bad_series.get(u["patient"]) else ""),
         "failed_series": bad_series.get(u["patient"], [])}
        for u in tm["unpaired"]]
    for pair in tm["pairs"]:
        sid = tcia._safe_name(pair["patient"])
        try:
            vols = {k: load_volume(work / pair[k], name=k.upper()) for k in REQUIRED}
        except NiftiError as exc:
            failed.append({"id": sid, "patient_id": pair["patient"], "reason": str(exc)})
            continue
        target = out / SUBJECTS_DIR / sid
        for key in REQUIRED:
            _copy(work / pair[key], target / f"{key}.nii.gz")
        notes = [f"MR {_grid_note(vols['mr'])}", f"CT {_grid_note(vols['ct'])}",
                 "no mask: preprocess computes a body mask from the CT"]
        notes += [f"{b['modality']} series {b['series']} failed and was not used: {b['error']}"
                  for b in bad_series.get(pair["patient"], [])]
        records.append(_record(sid, target, out, {
            "kind": "tcia", "collection": collection, "patient_id": pair["patient"],
            "mr_series": pair["mr_series"], "ct_series": pair["ct_series"]}, notes))
    if not records:
        detail = "; ".join(f"{f['id']}: {f['reason']}" for f in failed)
        raise StepInputError(f"tcia ingest: collection {collection!r} at {url} gave no usable "
                          f"MR+CT pair (counts {tm['counts']}): {detail}")
    shutil.copyfile(work / tcia.MANIFEST_NAME, out / "tcia_manifest.json")
    extra: dict[str, Any] = {"tcia_manifest": "tcia_manifest.json",
                             "tcia_counts": tm["counts"]}
    if inside:  # keep the cache with the published output so a rerun resumes
        os.replace(work, out / TCIA_CACHE)
        extra["tcia_cache"] = TCIA_CACHE
    else:
        extra["tcia_cache"] = None
        log.info("tcia ingest: working folder %s is local to this machine", work)
    return records, failed, extra
