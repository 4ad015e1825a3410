"""Pipeline step ``preprocess``: resample, register MR to CT, mask, clip, split, pack shards.

Each subject goes through :func:`components.subject_prep.preprocess_subject` (geometry,
registration, masks, NIfTI output: see that module); one that fails is listed under ``failed``
with the reason naming its files, and the others go on. With ``ray_address`` (a Ray GCS address
``host:port``, ``ray://...`` or ``auto``) the subjects run in parallel as Ray tasks (1 CPU each)
on that cluster (a Jobs API URL ``http(s)://<head>:8265``: the step submits itself as a Ray job
there, :mod:`components.launch`, whose driver does the same): each task fetches only its subject's files from ``input_uri`` (a folder every
node sees, or ``s3://``) and returns the files it wrote; the outputs are byte-identical to the
in-process run (registration is single-threaded and deterministic). The step then splits by subject, packs
the shards (:func:`gan_core.data.pack.pack_splits`: all splits published together or none) and
records the manifest.

Reads an ``ingest`` output (``<in>/manifest.json`` + ``<in>/subjects/...``) and writes::

    <out>/subjects/<id>/mr.nii.gz     MR (float32) registered to and resampled on the CT grid
    <out>/subjects/<id>/ct.nii.gz     CT (int16 HU) resampled to ``spacing``, clipped to
                                      [-1024, 3000]
    <out>/subjects/<id>/mask.nii.gz   body mask (uint8): the ingest mask, else computed from the CT
    <out>/subjects/<id>/lesion.nii.gz, labels.nii.gz   when the ingest had them (nearest neighbour)
    <out>/shards/{train,val,test}/    gan_core.data.pack.pack_splits (split by subject)
    <out>/shards/train_unpaired/      with ``unpaired``: the training subjects halved (seeded) into
                                      an MR and a CT domain, packed as cross subjects
                                      ``<mr id>+<ct id>`` (gan_core.data.unpaired): no training MR
                                      with its own CT; val/test stay paired, only to score
    <out>/ct_tissue_stats.json        with ``unpaired``: the CT domain's per-tissue values (needs
                                      tissue labels), for ``loss.tissue_value`` /
                                      ``loss.segment_consistency``
    <out>/manifest.json               step "preprocess": splits, per-subject registration and
                                      sha256, shard checksums, failed subjects, counts, timings

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
[--register none|rigid|affine] [--split 0.6,0.2,0.2] [--seed 0] [--inplane 96,96] [--unpaired]
[--ray-address HOST:PORT|auto|http://HEAD:8265] [--launcher auto|local|jobs|rayjob]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from components import storage
from components.launch import LAUNCHERS, check_launcher, is_remote, launch
from components.step import (Manifest, StepInputError, arg, json_safe, params_from_args,
                             params_parser, read_manifest, run_cli, staged, step_manifest,
                             write_manifest)
from components.subject_prep import (HU_CLIP, MASK_THRESHOLD_HU, ingest_files,
                                     preprocess_remote_subject, preprocess_subject)
from gan_core.data.pack import SPLITS, lesion_strata, pack_splits
from gan_core.data.register import REGISTER_MODES, registration_settings
from gan_core.data.shards import SubjectFiles, pack_shards, split_subjects
from gan_core.data.unpaired import CT_STATS_FILE, cross_subjects, domain_halves, write_ct_stats

__all__ = ["SUBJECTS_DIR", "SHARDS_DIR", "UNPAIRED_SPLIT", "PreprocessParams", "run_preprocess", "main"]

log = logging.getLogger(__name__)

#: Folders (relative to the output) of the subjects' NIfTI files and of the packed shards.
SUBJECTS_DIR = "subjects"
SHARDS_DIR = "shards"
#: the shards of the unpaired training set (``--unpaired``), beside train/val/test
UNPAIRED_SPLIT = "train_unpaired"


# --------------------------------------------------------------------------- the step


def _check_subjects(ingest: Manifest) -> list[dict[str, Any]]:
    """The ingest manifest's ``subjects``: ids that are folder names, relative file paths."""
    subjects = ingest.field("subjects")
    if not isinstance(subjects, list) or not subjects:
        raise StepInputError(f"{ingest.path}: field 'subjects' must be a non-empty list")
    for i, rec in enumerate(subjects):
        where = f"{ingest.path}: subjects[{i}]"
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not rec["id"]:
            raise StepInputError(f"{where}: expected an object with a non-empty string 'id'")
        sid = rec["id"]
        if "/" in sid or "\\" in sid or sid in {".", ".."} or sid.startswith("."):
            raise StepInputError(f"{where}: id {sid!r} is not a valid folder name")
        files = rec.get("files")
        if not isinstance(files, dict) or not all(k in files for k in ("mr", "ct")):
            raise StepInputError(f"{where} ({sid}): field 'files' must map at least 'mr' and "
                                 "'ct' to relative paths")
        for key, rel in files.items():
            p = PurePosixPath(str(rel))
            if p.is_absolute() or ".." in p.parts:
                raise StepInputError(f"{where} ({sid}): files.{key} = {rel!r} must be a "
                                     "relative path inside the ingest output")
    if not storage.is_complete(ingest.uri):
        raise StepInputError(f"{ingest.uri}: no {storage.SUCCESS_MARKER} marker: the ingest "
                             "output is incomplete (did the ingest step finish?)")
    return subjects


def _numbers(text: str, n: int, kind: type, what: str, allow_none: bool = False) -> tuple | None:
    """``n`` comma- (or ``x``-) separated numbers from a CLI string (``none`` when allowed)."""
    if allow_none and text.strip().lower() in {"none", "ct", "native"}:
        return None
    try:
        vals = tuple(kind(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated numbers"
                                         + (" or 'none'" if allow_none else "") + f", got {text!r}")
    return vals


@dataclass(frozen=True)
class PreprocessParams:
    """Parameters of the preprocess step (one CLI option each); checked and normalised on
    construction (tuples of floats/ints)."""

    input_uri: str = arg("ingest output (folder or s3://)")
    output_uri: str = arg("output folder or s3://bucket/prefix")
    spacing: tuple[float, float, float] | None = arg(
        "target voxel size mm X,Y,Z, or 'none' to keep the CT grid (default 3,3,5)",
        default=(3.0, 3.0, 5.0), parse=lambda t: _numbers(t, 3, float, "--spacing", True))
    register: str = arg("MR -> CT registration", default="rigid", choices=REGISTER_MODES)
    split: tuple[float, float, float] = arg(
        "train,val,test fractions (default 0.6,0.2,0.2)", default=(0.6, 0.2, 0.2),
        parse=lambda t: _numbers(t, 3, float, "--split"))
    seed: int = arg("split seed", default=0)
    inplane: tuple[int, int] | None = arg(
        "common in-plane shard size H,W (default: the largest subject's)", default=None,
        parse=lambda t: _numbers(t, 2, int, "--inplane"))
    ray_address: str | None = arg(
        "Ray cluster: subjects as parallel Ray tasks there. A Jobs API URL "
        "http(s)://<head>:8265 runs this step as a Ray job on that cluster; a GCS address "
        "host:port, ray://... or auto makes this process the driver (default: one subject "
        "after another in this process)", default=None)
    launcher: str = arg("auto (jobs for an http(s) ray_address, else local) | local | jobs | "
                        "rayjob (components.launch)", default="auto", choices=LAUNCHERS)
    unpaired: bool = arg("also pack the training subjects as an unpaired set (MR and CT from "
                         "disjoint halves: shards/train_unpaired, ct_tissue_stats.json)",
                         default=False)

    def __post_init__(self) -> None:
        if self.register not in REGISTER_MODES:
            raise StepInputError(f"register: {self.register!r}, expected one of "
                                 f"{', '.join(REGISTER_MODES)}")
        if self.spacing is not None:
            try:
                sp = tuple(float(s) for s in self.spacing)
            except (TypeError, ValueError):
                sp = ()
            if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise StepInputError(f"spacing: expected 3 positive numbers in mm or None, "
                                     f"got {self.spacing!r}")
            object.__setattr__(self, "spacing", sp)
        try:
            fr = tuple(float(f) for f in self.split)
        except (TypeError, ValueError):
            fr = ()
        if len(fr) != 3 or any(f < 0 or not math.isfinite(f) for f in fr) or sum(fr) <= 0:
            raise StepInputError(f"split: expected 3 non-negative fractions (train, val, test), "
                                 f"got {self.split!r}")
        object.__setattr__(self, "split", fr)
        check_launcher(self.launcher, self.ray_address)
        if self.inplane is not None:
            vals = tuple(self.inplane)
            if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in vals):
                raise StepInputError(f"inplane: expected 2 positive integers, got {self.inplane!r}")
            object.__setattr__(self, "inplane", (int(vals[0]), int(vals[1])))


def _record(res: dict[str, Any], written: dict[str, Path], out: Path) -> dict[str, Any]:
    """A subject's manifest record: paths relative to the output, sha256 of each file."""
    res["files"] = {k: f.relative_to(out).as_posix() for k, f in written.items()}
    res["sha256"] = {k: storage.sha256_file(f) for k, f in written.items()}
    if res["registration"]["flag"]:
        log.warning("preprocess: subject %s: %s", res["id"], res["registration"]["flag"])
    return res


def _process_cohort(subjects: list[dict[str, Any]], src: Path, out: Path,
                    p: PreprocessParams) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every subject through :func:`preprocess_subject`; one that fails is listed with the
    reason (naming its files) and the others go on. Returns ``(records, failed)``."""
    records: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for rec in subjects:
        sid = rec["id"]
        try:
            files = ingest_files(src, rec)
            res = preprocess_subject(sid, files, out / SUBJECTS_DIR / sid, spacing=p.spacing,
                                     register=p.register)
        except Exception as exc:  # noqa: BLE001 - one bad subject must not stop the cohort
            log.warning("preprocess: subject %s failed: %s", sid, exc)
            failed.append({"id": sid, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        records.append(_record(res, res.pop("written"), out))
    return records, failed


def _process_cohort_ray(subjects: list[dict[str, Any]], input_uri: str, out: Path,
                        p: PreprocessParams) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`_process_cohort` as one Ray task per subject
    (:func:`~components.subject_prep.preprocess_remote_subject`) on ``p.ray_address``; the
    files each task returns are written under ``out/subjects/<id>/`` here."""
    import ray

    from components.raytrain import ray_session

    if not storage.is_s3(input_uri):  # tasks on other nodes read the same path
        input_uri = os.path.abspath(input_uri[len("file://"):] if input_uri.startswith("file://")
                                    else input_uri)
    records: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with ray_session(p.ray_address):
        task = ray.remote(num_cpus=1, max_retries=2)(preprocess_remote_subject)
        refs = [task.remote(rec, input_uri, spacing=p.spacing, register=p.register)
                for rec in subjects]
        for rec, ref in zip(subjects, refs):
            res = ray.get(ref)
            if "error" in res:
                log.warning("preprocess: subject %s failed: %s", rec["id"], res["error"])
                failed.append({"id": rec["id"], "reason": res["error"]})
                continue
            written = {}
            for key, (name, data) in res.pop("data").items():
                f = out / SUBJECTS_DIR / rec["id"] / name
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)  # inside the staged output: published atomically later
                written[key] = f
            records.append(_record(res, written, out))
    return records, failed


def _files_of(by_id: dict[str, dict[str, Any]], out: Path, sid: str) -> SubjectFiles:
    f = by_id[sid]["files"]
    return SubjectFiles(sid, *(str(out / f[k]) for k in ("mr", "ct", "mask")),
                        *(str(out / f[k]) if k in f else None for k in ("lesion", "labels")))


def _shard_record(out: Path, name: str, n_subjects: int, index: dict[str, Any]) -> dict[str, Any]:
    shard_dir = out / SHARDS_DIR / name
    return {"path": f"{SHARDS_DIR}/{name}", "n_subjects": n_subjects,
            "n_slices": int(index["n_slices"]),
            "sha256": {f.name: storage.sha256_file(f)
                       for f in sorted(shard_dir.iterdir()) if f.is_file()}}


def _pack(records: list[dict[str, Any]], splits: dict[str, list[str]], out: Path,
          inplane: tuple[int, int]) -> dict[str, Any]:
    """Pack every split's shards under ``out/shards``; returns ``outputs.shards``."""
    by_id = {r["id"]: r for r in records}
    indexes = pack_splits({name: [_files_of(by_id, out, sid) for sid in splits[name]]
                           for name in SPLITS}, out / SHARDS_DIR, inplane=inplane)
    return {name: _shard_record(out, name, len(splits[name]), index)
            for name, index in indexes.items()}


def _pack_unpaired(records: list[dict[str, Any]], train: list[str], out: Path,
                   inplane: tuple[int, int], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training subjects as an unpaired set (:data:`UNPAIRED_SPLIT`) and, when the CT half
    has tissue labels, its tissue statistics (:data:`~gan_core.data.unpaired.CT_STATS_FILE`).
    Returns ``(outputs.shards entry, outputs.unpaired)``."""
    by_id = {r["id"]: r for r in records}
    mr_ids, ct_ids = domain_halves(train, seed)
    try:
        cross = cross_subjects([_files_of(by_id, out, i) for i in mr_ids],
                               [_files_of(by_id, out, i) for i in ct_ids])
        index = pack_shards(cross, out / SHARDS_DIR / UNPAIRED_SPLIT, inplane=inplane)
    except ValueError as exc:
        raise StepInputError(f"preprocess --unpaired: cannot pack the training subjects "
                             f"{train} as MR domain {mr_ids} and CT domain {ct_ids} (each cross "
                             f"subject's MR and CT must share one grid): {exc}") from None
    stats = None
    if all("labels" in by_id[i]["files"] for i in ct_ids):
        write_ct_stats([_files_of(by_id, out, i) for i in ct_ids], out / CT_STATS_FILE)
        stats = CT_STATS_FILE
    return (_shard_record(out, UNPAIRED_SPLIT, len(cross), index),
            {"mr_subjects": mr_ids, "ct_subjects": ct_ids, "ct_tissue_stats": stats})


def run_preprocess(input_uri: str, output_uri: str, **params: Any) -> dict[str, Any]:
    """Preprocess the ingest output at ``input_uri`` into ``output_uri``; return the manifest.

    ``params``: the other fields of :class:`PreprocessParams` (``spacing``, ``register``,
    ``split``, ``seed``, ``inplane``). Subjects that fail (unreadable, checksum mismatch, empty
    mask, ...) are listed under ``failed`` with the reason and the others go on; bad input, or
    no usable subject, raises :class:`~components.step.StepInputError`. Splits are by subject
    (``split_subjects`` with ``seed``); every split is packed with the same in-plane size
    (``inplane`` or the largest subject's).

    >>> m = run_preprocess("data/raw", "s3://medgan/processed", spacing=None)   # doctest: +SKIP
    """
    p = PreprocessParams(input_uri, output_uri, **params)
    if is_remote(p.launcher, p.ray_address):  # the same step, run by a Ray job / RayJob
        return launch("components.preprocess", "preprocess", p)
    t0 = time.monotonic()
    ingest = read_manifest(p.input_uri, "ingest",
                           required=("subjects", "params", "counts", "code_version"))
    subjects = _check_subjects(ingest)
    # Ray tasks fetch their own subject's files: no local copy of the whole input then
    inputs = contextlib.nullcontext(None) if p.ray_address else storage.local_copy(p.input_uri)
    with inputs as src, staged(p.output_uri) as out:
        t_sub = time.monotonic()
        if p.ray_address:
            records, failed = _process_cohort_ray(subjects, p.input_uri, out, p)
        else:
            records, failed = _process_cohort(subjects, Path(src), out, p)
        t_sub = time.monotonic() - t_sub
        if not records:
            detail = "; ".join(f"{f['id']}: {f['reason']}" for f in failed)
            raise StepInputError(f"preprocess {p.input_uri}: no subject could be processed "
                                 f"({len(failed)} failed): {detail}")
        try:
            strata = lesion_strata({r["id"]: out / r["files"]["lesion"] if "lesion" in r["files"]
                                    else None for r in records})
            splits = split_subjects([r["id"] for r in records], list(p.split), p.seed, strata=strata)
        except ValueError as exc:
            raise StepInputError(f"preprocess {p.input_uri}: cannot split {len(records)} "
                                 f"subject(s): {exc}") from None
        by_id = {r["id"]: r for r in records}
        for name in SPLITS:
            for sid in splits[name]:
                by_id[sid]["split"] = name
        size = p.inplane or (max(r["shape"][0] for r in records),
                             max(r["shape"][1] for r in records))
        t_pack = time.monotonic()
        shards = _pack(records, splits, out, tuple(size))
        unpaired = None
        if p.unpaired:
            shards[UNPAIRED_SPLIT], unpaired = _pack_unpaired(records, splits["train"], out,
                                                              tuple(size), p.seed)
        t_pack = time.monotonic() - t_pack
        reg_ok = [r for r in records if p.register != "none" and r["registration"]["accepted"]]
        manifest = json_safe(step_manifest(
            "preprocess",
            inputs={"input_uri": p.input_uri, "ingest_manifest_sha256": ingest.sha256,
                    "ingest_subjects": len(subjects),
                    "ingest_failed": len(ingest.data.get("failed") or []),
                    "ingest_code_version": ingest.data["code_version"]},
            params={"spacing": list(p.spacing) if p.spacing else None, "register": p.register,
                    "split": list(p.split), "seed": int(p.seed),
                    "inplane": list(p.inplane) if p.inplane else None, "hu_clip": list(HU_CLIP),
                    "unpaired": bool(p.unpaired),
                    "mask_threshold_hu": MASK_THRESHOLD_HU,
                    "registration": registration_settings()},
            outputs={"subjects_dir": SUBJECTS_DIR, "shards": shards, "inplane": list(size),
                     "unpaired": unpaired},
            timings={"subjects_s": round(t_sub, 3), "pack_s": round(t_pack, 3),
                     "total_s": round(time.monotonic() - t0, 3)},
            splits=splits,
            subjects=sorted(records, key=lambda r: r["id"]),
            failed=failed,
            counts={"subjects": len(records), "failed": len(failed),
                    **{name: len(splits[name]) for name in SPLITS},
                    "registration_accepted": len(reg_ok),
                    "registration_rejected": sum(not r["registration"]["accepted"]
                                                 for r in records),
                    "computed_masks": sum(r["mask_source"] != "ingest" for r in records),
                    "outside_fov_voxels": sum(r["outside_fov_voxels"] for r in records)}))
        write_manifest(out, manifest)
    log.info("preprocess %s -> %s: %s", p.input_uri, p.output_uri, manifest["counts"])
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints the counts as JSON (exit codes: :mod:`components.step`)."""
    parser = params_parser(PreprocessParams, "python -m components.preprocess",
                           "Resample, register MR->CT (Mattes MI), mask, clip HU, split by "
                           "subject and pack shards from an ingest output.")

    def run(a: Any) -> dict[str, Any]:
        m = run_preprocess(**dataclasses.asdict(params_from_args(PreprocessParams, a)))
        return {"output_uri": a.output_uri, **m["counts"]}

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
