"""Pipeline step ``ingest``: bring a cohort in as NIfTI subjects plus a manifest.

Three sources, one output layout (``output_uri`` is a local folder or ``s3://bucket/prefix``)::

    <out>/subjects/<id>/mr.nii.gz, ct.nii.gz[, mask.nii.gz, labels.nii.gz, lesion.nii.gz]
    <out>/manifest.json        step "ingest": subjects (id, relative files, sha256, source),
                               failed (id + reason), params, counts, timings, code_version
    <out>/_SUCCESS             written last (components.storage.staged_output)

* ``phantom``: the built-in digital head phantom (``gan_core.data.phantom.write_cohort``); its
  ``cohort.json`` (per-subject meta, e.g. the planted MR misalignment) is kept as
  ``<out>/subjects/cohort.json``.
* ``folder``: a SynthRAD2023-layout root ``<root>/<subject>/{mr,ct,mask}.nii.gz`` (local or
  ``s3://``). Each subject is validated (readable NIfTI, MR/CT/mask/labels/lesion on one voxel
  grid, non-empty mask); a bad subject is listed under ``failed`` and the others go on. The mask
  is optional (then preprocess computes one from the CT). Folders holding neither ``mr.nii.gz``
  nor ``ct.nii.gz`` (e.g. SynthRAD's ``overview/``) and hidden folders are not subjects.
* ``tcia``: an NBIA v4 collection via :func:`components.tcia.ingest_tcia`; each MR+CT pair
  becomes ``subjects/<patient>/{mr,ct}.nii.gz`` (no mask: preprocess computes it). Failed series
  and unpaired patients are carried into ``failed``; the TCIA manifest is kept as
  ``<out>/tcia_manifest.json``. Resumable: the TCIA working folder (downloaded NIfTI + its
  manifest) lives in ``<out>/.tcia_cache`` for a local output, so a rerun skips finished series.
  For an ``s3://`` output the working folder is local to the machine (pod) running the step:
  ``cache_dir`` if given, else ``$MEDGAN_CACHE_DIR/tcia/<key>`` or
  ``<tmp>/medgan-tcia-cache/<key>`` (key derived from output URI and collection); a retry in
  the same pod resumes, a fresh pod downloads again.

Example:
    >>> import tempfile
    >>> m = run_ingest("phantom", tempfile.mkdtemp(), subjects=2, shape=(32, 32, 16),
    ...                spacing=(6.0, 6.0, 9.0))
    >>> m["step"], m["counts"]["subjects"], sorted(m["subjects"][0]["files"])
    ('ingest', 2, ['ct', 'labels', 'lesion', 'mask', 'mr'])

CLI: ``python -m components.ingest --source phantom|folder|tcia --output-uri URI [...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components import storage
from components.mlflow_utils import redact_uri
from components.step import (StepInputError, arg, params_from_args, params_parser, run_cli,
                             staged, step_manifest, write_manifest)
from gan_core.data.nifti import NiftiError, Volume, check_same_grid, load_volume

__all__ = ["SOURCES", "SUBJECTS_DIR", "TCIA_CACHE", "IngestParams", "run_ingest", "main"]

log = logging.getLogger(__name__)

#: The sources ``run_ingest`` understands.
SOURCES = ("phantom", "folder", "tcia")
#: Folder (relative to the output) holding one folder per subject.
SUBJECTS_DIR = "subjects"
#: TCIA working folder inside a local output (resume cache).
TCIA_CACHE = ".tcia_cache"
#: Files a subject may hold; mr and ct are required.
REQUIRED = ("mr", "ct")
OPTIONAL = ("mask", "labels", "lesion")


# --------------------------------------------------------------------------- helpers


def _triple(value: Sequence[float], what: str, kind: type) -> tuple:
    try:
        vals = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3:
        raise StepInputError(f"{what}: expected 3 numbers, got {value!r}")
    return vals


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


def _ingest_phantom(out: Path, *, subjects: int, seed: int, shape: Sequence[int],
                    spacing: Sequence[float], lesion_prevalence: float,
                    misalign_mm: float) -> tuple[list[dict], list[dict], dict[str, Any]]:
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


def _ingest_folder(out: Path, folder: str) -> tuple[list[dict], list[dict], dict[str, Any]]:
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


def _ingest_tcia(out: Path, output_uri: str, *, collection: str | None,
                 modalities: Sequence[str], patient_ids: Sequence[str] | None,
                 base_url: str | None, cache_dir: str | None
                 ) -> tuple[list[dict], list[dict], dict[str, Any]]:
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


# --------------------------------------------------------------------------- the step


def _parse_triple(kind: type, what: str):
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            vals = tuple(kind(p) for p in parts)
        except ValueError:
            vals = ()
        if len(vals) != 3:
            raise argparse.ArgumentTypeError(f"{what}: expected 3 comma-separated numbers, "
                                             f"got {text!r}")
        return vals
    return parse


@dataclass(frozen=True)
class IngestParams:
    """Parameters of the ingest step (one CLI option each); each source reads its own group."""

    source: str = arg("where the cohort comes from", choices=SOURCES)
    output_uri: str = arg("local folder or s3://bucket/prefix")
    # phantom
    subjects: int = arg("phantom: number of subjects", default=8)
    seed: int = arg("phantom: cohort seed", default=0)
    shape: tuple[int, int, int] = arg("phantom: voxels X,Y,Z (default 64,64,32)",
                                      default=(64, 64, 32), parse=_parse_triple(int, "--shape"))
    spacing: tuple[float, float, float] = arg("phantom: mm X,Y,Z (default 3,3,5)",
                                              default=(3.0, 3.0, 5.0),
                                              parse=_parse_triple(float, "--spacing"))
    lesion_prevalence: float = arg("phantom: fraction of subjects with a lesion", default=0.3)
    misalign_mm: float = arg("phantom: planted MR misalignment (mm)", default=0.0)
    # folder
    folder: str | None = arg("folder: SynthRAD-layout root (local path or s3://)", default=None)
    # tcia
    collection: str | None = arg("tcia: NBIA collection", default=None)
    modalities: tuple[str, ...] = arg("tcia: modality, repeatable (default MR and CT)",
                                      default=("MR", "CT"), flag="--modality", append=True,
                                      metavar="MOD", convert=lambda v: tuple(v or ("MR", "CT")))
    patient_ids: tuple[str, ...] | None = arg(
        "tcia: restrict to this PatientID, repeatable", default=None, flag="--patient",
        append=True, metavar="ID", convert=lambda v: tuple(v) if v else None)
    base_url: str | None = arg("tcia: NBIA v4 services URL (default: public TCIA)", default=None)
    cache_dir: str | None = arg("tcia: working folder (default: <out>/.tcia_cache for a local "
                                "output, a local temp folder for s3://)", default=None)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise StepInputError(f"unknown ingest source {self.source!r}: expected one of "
                                 f"{', '.join(SOURCES)}")
        if not self.output_uri:
            raise StepInputError("ingest: output_uri is required (a local folder or "
                                 "s3://bucket/prefix)")
        if self.source == "folder" and not self.folder:
            raise StepInputError("folder ingest: --folder (a SynthRAD-layout root) is required")


def run_ingest(source: str, output_uri: str, **params: Any) -> dict[str, Any]:
    """Ingest a cohort from ``source`` into ``output_uri``; return the manifest written there.

    ``params``: the other fields of :class:`IngestParams`. ``phantom`` uses ``subjects, seed,
    shape, spacing, lesion_prevalence, misalign_mm``; ``folder`` uses ``folder`` (local path or
    ``s3://``); ``tcia`` uses ``collection, modalities, patient_ids, base_url`` (and
    ``cache_dir``, see the module doc). The output is published atomically; raises
    :class:`~components.step.StepInputError` when no subject is usable.

    >>> import tempfile
    >>> try:
    ...     run_ingest("folder", tempfile.mkdtemp())
    ... except StepInputError as err:
    ...     print(err)
    folder ingest: --folder (a SynthRAD-layout root) is required
    """
    p = IngestParams(source, output_uri, **params)
    if p.source == "phantom":
        step_params: dict[str, Any] = {
            "subjects": int(p.subjects), "seed": int(p.seed),
            "shape": list(_triple(p.shape, "phantom shape", int)),
            "spacing": list(_triple(p.spacing, "phantom spacing", float)),
            "lesion_prevalence": float(p.lesion_prevalence), "misalign_mm": float(p.misalign_mm)}
        inputs: dict[str, Any] = {"source": "phantom"}
    elif p.source == "folder":
        step_params = {}
        inputs = {"source": "folder", "folder": p.folder}
    else:
        step_params = {"collection": p.collection, "modalities": [m.upper() for m in p.modalities],
                       "patient_ids": sorted(p.patient_ids) if p.patient_ids else None}
        inputs = {"source": "tcia", "base_url": redact_uri(p.base_url) or "default",
                  "collection": p.collection}

    start = time.monotonic()
    with staged(p.output_uri) as out:
        (out / SUBJECTS_DIR).mkdir()
        if p.source == "phantom":
            records, failed, extra = _ingest_phantom(
                out, subjects=step_params["subjects"], seed=step_params["seed"],
                shape=step_params["shape"], spacing=step_params["spacing"],
                lesion_prevalence=step_params["lesion_prevalence"],
                misalign_mm=step_params["misalign_mm"])
        elif p.source == "folder":
            records, failed, extra = _ingest_folder(out, str(p.folder))
        else:
            records, failed, extra = _ingest_tcia(
                out, p.output_uri, collection=p.collection, modalities=step_params["modalities"],
                patient_ids=step_params["patient_ids"], base_url=p.base_url, cache_dir=p.cache_dir)
        records.sort(key=lambda r: r["id"])
        counts = {"subjects": len(records), "failed": len(failed),
                  **{f"with_{k}": sum(k in r["files"] for r in records) for k in OPTIONAL}}
        manifest = step_manifest("ingest", inputs=inputs, params=step_params,
                                 outputs={"subjects_dir": SUBJECTS_DIR, **extra},
                                 timings={"total_s": round(time.monotonic() - start, 3)},
                                 subjects=records, failed=failed, counts=counts)
        write_manifest(out, manifest)
    log.info("ingest %s -> %s: %s", p.source, p.output_uri, counts)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints the manifest counts as JSON (exit codes: components.step)."""
    parser = params_parser(IngestParams, "python -m components.ingest",
                           "Ingest a cohort (phantom, SynthRAD-layout folder or TCIA collection) "
                           "as NIfTI subjects + manifest.json.")

    def run(a: Any) -> dict[str, Any]:
        m = run_ingest(**dataclasses.asdict(params_from_args(IngestParams, a)))
        return {"output_uri": a.output_uri, **m["counts"]}

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
