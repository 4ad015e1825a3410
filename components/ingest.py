"""Pipeline step ``ingest``: bring a cohort in as NIfTI subjects plus a manifest.

Three sources (:mod:`components.sources`), one output layout (``output_uri`` is a local folder or ``s3://bucket/prefix``)::

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
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components.mlflow_utils import redact_uri
from components.sources import (OPTIONAL, SUBJECTS_DIR, ingest_folder, ingest_phantom,
                                ingest_tcia)
from components.step import (StepInputError, arg, params_from_args, params_parser, run_cli,
                             staged, step_manifest, write_manifest)

__all__ = ["SOURCES", "IngestParams", "run_ingest", "main"]

log = logging.getLogger(__name__)

#: The sources ``run_ingest`` understands (:mod:`components.sources`).
SOURCES = ("phantom", "folder", "tcia")


def _triple(value: Sequence[float], what: str, kind: type) -> tuple:
    try:
        vals = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3:
        raise StepInputError(f"{what}: expected 3 numbers, got {value!r}")
    return vals


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
            records, failed, extra = ingest_phantom(
                out, subjects=step_params["subjects"], seed=step_params["seed"],
                shape=step_params["shape"], spacing=step_params["spacing"],
                lesion_prevalence=step_params["lesion_prevalence"],
                misalign_mm=step_params["misalign_mm"])
        elif p.source == "folder":
            records, failed, extra = ingest_folder(out, str(p.folder))
        else:
            records, failed, extra = ingest_tcia(
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
