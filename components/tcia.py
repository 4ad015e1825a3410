"""TCIA / NBIA v4 REST client and a resumable MR+CT cohort ingest to NIfTI.

NBIA v4 (public collections need no login):

- ``GET {base}getSeries?Collection=&Modality=&PatientID=&format=json`` -> JSON list of series
  records (``SeriesInstanceUID``, ``PatientID``, ``Modality``, ``StudyInstanceUID``,
  ``ImageCount``, ...);
- ``GET {base}getImage?SeriesInstanceUID=`` -> a zip of the series' DICOM files.

``ingest_tcia`` lists the series of a collection, downloads, safely extracts and converts each
to ``<out>/<patient>/<modality>_<uid>.nii.gz``, and pairs MR with CT per patient. The manifest
``<out>/tcia_manifest.json`` is rewritten atomically after every series; a rerun skips series
whose NIfTI still has the recorded sha256, and a failing series is recorded with its error
while the others go on. Paths in the manifest are relative to ``<out>``.

Storage here is a local folder; to publish to S3 wrap the call in
``components.storage.staged_output``.

Example:
    >>> manifest = ingest_tcia(Path("data/raw"), collection="Pelvic-Reference-Data",
    ...                        patient_ids=["Pelvic-Ref-001"])        # doctest: +SKIP
    >>> manifest["pairs"][0]                                          # doctest: +SKIP
    {'patient': 'Pelvic-Ref-001', 'mr': 'Pelvic-Ref-001/MR_1.3...nii.gz', 'ct': ..., ...}

CLI: ``python -m components.tcia --out data/raw --collection NAME [--modality MR --modality CT]
[--patient ID ...] [--base-url URL]``.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import shutil
import stat
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from gan_core.data.dicom import group_series, write_series_nifti

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/"
MANIFEST_NAME = "tcia_manifest.json"
MANIFEST_VERSION = 1
CACHE_DIR = ".tcia_cache"
USER_AGENT = "medgan-tcia/0.1 (+requests)"


class NbiaError(RuntimeError):
    """A request to NBIA failed for good (the message names the URL)."""


class NbiaHTTPError(NbiaError):
    """NBIA answered with a non-retryable HTTP status (4xx other than 429)."""

    def __init__(self, message: str, status: int, url: str) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class ArchiveError(ValueError):
    """A downloaded zip cannot be extracted (corrupt, empty)."""


class UnsafeZipError(ArchiveError):
    """A zip member would land outside the target folder (absolute path, '..', symlink)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent/unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class NbiaClient:
    """NBIA v4 REST client with retries (429 honouring Retry-After, 5xx, connection errors,
    timeouts, truncated downloads) and exponential backoff with jitter.

    ``sleep`` is injectable (tests pass a no-op); ``max_retries`` counts retries after the
    first attempt.

    >>> client = NbiaClient()                                          # doctest: +SKIP
    >>> series = client.list_series(collection="LIDC-IDRI", modality="CT")   # doctest: +SKIP
    >>> client.download_series(series[0]["SeriesInstanceUID"], Path("s.zip"))  # doctest: +SKIP
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, timeout: float = 30,
                 max_retries: int = 5, backoff: float = 0.5,
                 session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 max_retry_after: float = 300.0, chunk_size: int = 1 << 20) -> None:
        if max_retries < 0:
            raise ValueError(f"NbiaClient: max_retries={max_retries}, expected >= 0")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.chunk_size = chunk_size
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        self._sleep = sleep

    # --- plumbing --------------------------------------------------------------------------
    def _url(self, endpoint: str, params: dict[str, str]) -> str:
        return requests.Request("GET", self.base_url + endpoint, params=params).prepare().url or ""

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = self.backoff * (2 ** attempt)
        return base + random.uniform(0, 0.1 * base)

    def _check_status(self, resp: requests.Response, url: str) -> None:
        code = resp.status_code
        if code == 429 or code >= 500:
            raise _Retryable(f"HTTP {code} {resp.reason}",
                             _parse_retry_after(resp.headers.get("Retry-After")) if code == 429
                             else None)
        if code >= 400:
            snippet = resp.text[:200].strip()
            raise NbiaHTTPError(f"GET {url} failed: HTTP {code} {resp.reason}"
                                + (f": {snippet}" if snippet else ""), code, url)

    def _with_retries(self, url: str, attempt_fn: Callable[[], Any]) -> Any:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                return attempt_fn()
            except _Retryable as exc:
                last = exc
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                last = _Retryable(f"{type(exc).__name__}: {exc}")
            if attempt == self.max_retries:
                break
            delay = self._delay(attempt, getattr(last, "retry_after", None))
            log.warning("GET %s: %s; retry %d/%d in %.2fs", url, last, attempt + 1,
                        self.max_retries, delay)
            self._sleep(delay)
        raise NbiaError(f"GET {url} failed after {self.max_retries + 1} attempt(s); "
                        f"last error: {last}")

    # --- API -------------------------------------------------------------------------------
    def list_series(self, collection: str | None = None, modality: str | None = None,
                    patient_id: str | None = None) -> list[dict[str, Any]]:
        """Series records from ``getSeries`` (each has at least ``SeriesInstanceUID``).

        >>> NbiaClient().list_series("Pelvic-Reference-Data", "MR")   # doctest: +SKIP
        [{'SeriesInstanceUID': '1.3...', 'PatientID': 'Pelvic-Ref-001', 'Modality': 'MR', ...}]
        """
        params = {k: v for k, v in (("Collection", collection), ("Modality", modality),
                                    ("PatientID", patient_id)) if v}
        params["format"] = "json"
        url = self._url("getSeries", params)

        def attempt() -> Any:
            with self.session.get(self.base_url + "getSeries", params=params,
                                  timeout=self.timeout) as resp:
                self._check_status(resp, url)
                text = resp.text
            if not text.strip():  # NBIA answers an empty body when nothing matches
                return []
            try:
                return json.loads(text)
            except ValueError as exc:
                raise NbiaError(f"GET {url}: response is not JSON ({exc}): {text[:200]!r}") from exc

        rows = self._with_retries(url, attempt)
        if not isinstance(rows, list) or not all(
                isinstance(r, dict) and r.get("SeriesInstanceUID") for r in rows):
            raise NbiaError(f"GET {url}: expected a JSON list of series objects with "
                            f"SeriesInstanceUID, got {str(rows)[:200]}")
        return rows

    def download_series(self, uid: str, dest_zip: Path) -> Path:
        """Download the zip of series ``uid`` to ``dest_zip`` (temp file + rename).

        A body shorter than its Content-Length is retried like a 5xx; after the last retry an
        :class:`NbiaError` names the URL and the byte counts.

        >>> NbiaClient().download_series("1.3.6.1...", Path("series.zip"))   # doctest: +SKIP
        PosixPath('series.zip')
        """
        if not uid:
            raise ValueError("download_series: empty SeriesInstanceUID")
        dest_zip = Path(dest_zip)
        dest_zip.parent.mkdir(parents=True, exist_ok=True)
        params = {"SeriesInstanceUID": uid}
        url = self._url("getImage", params)

        def attempt() -> Path:
            tmp = dest_zip.with_name(f".{dest_zip.name}.part-{uuid.uuid4().hex[:8]}")
            try:
                with self.session.get(self.base_url + "getImage", params=params,
                                      timeout=self.timeout, stream=True) as resp:
                    self._check_status(resp, url)
                    expected = resp.headers.get("Content-Length")
                    encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
                    got = 0
                    with open(tmp, "wb") as fh:
                        for chunk in resp.iter_content(self.chunk_size):
                            fh.write(chunk)
                            got += len(chunk)
                if expected is not None and expected.isdigit() and not encoded \
                        and got != int(expected):
                    raise _Retryable(f"truncated download: got {got} of {expected} bytes")
                if got == 0:
                    raise NbiaError(f"GET {url}: empty response (unknown SeriesInstanceUID?)")
                os.replace(tmp, dest_zip)
                return dest_zip
            finally:
                tmp.unlink(missing_ok=True)

        return self._with_retries(url, attempt)


# --- zip extraction ---------------------------------------------------------------------------
def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if "\x00" in name:
        return "NUL byte in the name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def safe_extract(zip_path: Path, dest_dir: Path) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` (replaced if present); return the files.

    Every member is checked first: absolute paths, ``..`` components and symlinks raise
    :class:`UnsafeZipError` naming the member, and nothing is extracted. Extraction goes to a
    temporary sibling folder renamed to ``dest_dir`` at the end.

    >>> safe_extract(Path("series.zip"), Path("series"))   # doctest: +SKIP
    [PosixPath('series/1-01.dcm'), PosixPath('series/1-02.dcm')]
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{zip_path}: not a readable zip archive ({exc})") from exc
    with zf:
        members = zf.infolist()
        for info in members:
            reason = _unsafe_reason(info)
            if reason:
                raise UnsafeZipError(f"{zip_path}: refusing to extract member "
                                     f"{info.filename!r}: {reason} (zip-slip)")
        files = [i for i in members if not i.is_dir()]
        if not files:
            raise ArchiveError(f"{zip_path}: archive holds no files")
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.tmp-", dir=dest_dir.parent))
        try:
            root = tmp.resolve()
            for info in files:
                target = (tmp / info.filename.replace("\\", "/")).resolve()
                if root not in target.parents:  # belt and braces after _unsafe_reason
                    raise UnsafeZipError(f"{zip_path}: member {info.filename!r} resolves "
                                         f"outside the target folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            if dest_dir.exists():
                shutil.rmtree(dest_dir)
            os.replace(tmp, dest_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return sorted(p for p in dest_dir.rglob("*") if p.is_file())


# --- ingest ----------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".")
    return cleaned or "_"


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_manifest(path: Path, collection: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: manifest is not valid JSON ({exc}); move it away to "
                         "start over") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("series"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'series' mapping")
    if manifest.get("collection") != collection:
        raise ValueError(f"{path}: holds collection {manifest.get('collection')!r}, not "
                         f"{collection!r}; use another output folder")
    return manifest


def _pairs(series: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """MR+CT pairs per patient (largest ok series of each modality), and the unpaired."""
    by_patient: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {}
    for uid, entry in series.items():
        by_patient.setdefault(entry["patient_id"], {}).setdefault(
            entry["modality"], []).append((uid, entry))
    pairs, unpaired = [], []
    for patient in sorted(by_patient):
        best: dict[str, tuple[str, dict[str, Any]]] = {}
        failed: list[str] = []
        for modality, items in by_patient[patient].items():
            ok = [(u, e) for u, e in items if e.get("status") == "ok"]
            failed += [u for u, e in items if e.get("status") != "ok"]
            if ok:
                best[modality] = max(ok, key=lambda ue: (ue[1].get("n_slices", 0), ue[0]))
        if "MR" in best and "CT" in best:
            pairs.append({"patient": patient,
                          "mr": best["MR"][1]["nifti"], "ct": best["CT"][1]["nifti"],
                          "mr_series": best["MR"][0], "ct_series": best["CT"][0]})
        else:
            unpaired.append({"patient": patient,
                             "missing": [m for m in ("MR", "CT") if m not in best],
                             "have": {m: best[m][1]["nifti"] for m in sorted(best)},
                             "failed_series": sorted(failed)})
    return pairs, unpaired


def _convert_one(client: NbiaClient, out: Path, uid: str, nifti: Path) -> dict[str, Any]:
    cache = out / CACHE_DIR
    zip_path, dicom_dir = cache / f"{_safe_name(uid)}.zip", cache / _safe_name(uid)
    try:
        client.download_series(uid, zip_path)
        safe_extract(zip_path, dicom_dir)
        groups = group_series(dicom_dir)
        if uid in groups:
            files = groups[uid]
        elif len(groups) == 1:
            files = next(iter(groups.values()))
        else:
            raise ValueError(f"series {uid}: the zip holds DICOM series {sorted(groups)}, "
                             "none matching the requested SeriesInstanceUID")
        return write_series_nifti(files, nifti)
    finally:
        zip_path.unlink(missing_ok=True)
        shutil.rmtree(dicom_dir, ignore_errors=True)


def ingest_tcia(out_dir: Path, *, collection: str, modalities: Sequence[str] = ("MR", "CT"),
                patient_ids: Iterable[str] | None = None, base_url: str = DEFAULT_BASE_URL,
                client: NbiaClient | None = None) -> dict[str, Any]:
    """Download and convert a TCIA collection's MR/CT series to NIfTI; return the manifest.

    ``client`` (default ``NbiaClient(base_url)``) overrides ``base_url``.
    Resumable (see module docstring). A series that fails is recorded as
    ``{"status": "failed", "error": ...}`` and the others go on. Raises ``NbiaError`` when the
    listing itself fails and ``ValueError`` when it finds no series.

    >>> m = ingest_tcia(Path("raw"), collection="Pelvic-Reference-Data")   # doctest: +SKIP
    >>> m["counts"]                                                        # doctest: +SKIP
    {'series_ok': 116, 'series_failed': 0, 'pairs': 58, 'unpaired': 0}
    """
    if not collection:
        raise ValueError("ingest_tcia: collection is required")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    client = client or NbiaClient(base_url)
    modalities = [m.upper() for m in modalities]
    patients = sorted(set(patient_ids)) if patient_ids else None
    manifest_path = out / MANIFEST_NAME
    old = _load_manifest(manifest_path, collection)
    series: dict[str, dict[str, Any]] = dict(old.get("series", {}))

    listed: dict[str, dict[str, Any]] = {}
    for modality in modalities:
        for pid in patients or [None]:
            for row in client.list_series(collection, modality, pid):
                if str(row.get("Modality", modality)).upper() != modality:
                    continue
                if pid is not None and row.get("PatientID") != pid:
                    continue
                listed.setdefault(row["SeriesInstanceUID"], row)
    if not listed:
        raise ValueError(f"TCIA collection {collection!r}: no series for modalities "
                         f"{modalities}" + (f" and patients {patients}" if patients else ""))

    manifest: dict[str, Any] = {
        "step": "ingest_tcia", "version": MANIFEST_VERSION, "collection": collection,
        "base_url": client.base_url, "series": series,
    }

    def save() -> None:
        pairs, unpaired = _pairs(series)
        manifest["pairs"], manifest["unpaired"] = pairs, unpaired
        manifest["counts"] = {
            "series_ok": sum(e["status"] == "ok" for e in series.values()),
            "series_failed": sum(e["status"] != "ok" for e in series.values()),
            "pairs": len(pairs), "unpaired": len(unpaired)}
        _write_json_atomic(manifest_path, manifest)

    stats = {"converted": 0, "skipped": 0, "failed": 0}
    for uid in sorted(listed, key=lambda u: (listed[u].get("PatientID", ""), u)):
        row = listed[uid]
        patient = str(row.get("PatientID") or "unknown")
        modality = str(row.get("Modality", "")).upper()
        rel = f"{_safe_name(patient)}/{modality}_{_safe_name(uid)}.nii.gz"
        nifti = out / rel
        prev = series.get(uid)
        if prev and prev.get("status") == "ok" and nifti.exists() \
                and prev.get("sha256") == sha256_file(nifti):
            stats["skipped"] += 1
            continue
        start = time.monotonic()
        try:
            meta = _convert_one(client, out, uid, nifti)
            entry = {"status": "ok", "patient_id": patient, "modality": modality,
                     "nifti": rel, "sha256": sha256_file(nifti),
                     "n_slices": meta["n_slices"], "shape": meta["shape"],
                     "spacing": meta["spacing"], "units": meta["units"],
                     "skipped_files": [{"file": Path(s["file"]).name, "reason": s["reason"]}
                                       for s in meta["skipped"]]}
            stats["converted"] += 1
        except Exception as exc:  # one bad series must not kill the cohort
            log.error("series %s (%s %s) failed: %s", uid, patient, modality, exc)
            entry = {"status": "failed", "patient_id": patient, "modality": modality,
                     "error": f"{type(exc).__name__}: {exc}"}
            nifti.unlink(missing_ok=True)  # stale or checksum-mismatched output
            stats["failed"] += 1
        entry["seconds"] = round(time.monotonic() - start, 3)
        series[uid] = entry
        save()
    save()
    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    log.info("ingest_tcia %s: %s", collection, stats)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 1 when no series could be converted."""
    parser = argparse.ArgumentParser(
        prog="python -m components.tcia",
        description="Download a TCIA collection's MR/CT series via NBIA v4, convert to NIfTI "
                    "and pair MR with CT per patient (resumable; manifest in OUT).")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--collection", required=True, help="TCIA collection name")
    parser.add_argument("--modality", action="append", dest="modalities", metavar="MOD",
                        help="modality to fetch, repeatable (default: MR and CT)")
    parser.add_argument("--patient", action="append", dest="patients", metavar="ID",
                        help="restrict to this PatientID, repeatable (default: all)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help=f"NBIA v4 services URL (default: {DEFAULT_BASE_URL})")
    parser.add_argument("--timeout", type=float, default=30, help="seconds per request")
    parser.add_argument("--max-retries", type=int, default=5, help="retries per request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    client = NbiaClient(args.base_url, timeout=args.timeout, max_retries=args.max_retries)
    manifest = ingest_tcia(args.out, collection=args.collection,
                           modalities=tuple(args.modalities or ("MR", "CT")),
                           patient_ids=args.patients, client=client)
    print(json.dumps(manifest["counts"]))
    return 0 if manifest["counts"]["series_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
