"""Test helper: real DICOM series built from pydicom's bundled files, and a local NBIA v4 server.

``make_series`` copies ``CT_small.dcm`` / ``MR_small.dcm`` into a multi-slice series (new
ImagePositionPatient / InstanceNumber / SOPInstanceUID per slice, pixel values offset by the
slice index so the order can be checked) and returns the encoded files in shuffled order.

``NbiaServer`` is a ``ThreadingHTTPServer`` on 127.0.0.1:0 answering ``getSeries`` (JSON list,
filtered by Collection / Modality / PatientID) and ``getImage?SeriesInstanceUID=`` (a zip),
with scripted faults per series and a request log to count what the client asked for.

>>> with NbiaServer() as srv:                                    # doctest: +SKIP
...     srv.add_series("C1", make_series("CT", n_slices=3, patient_id="P1"))
...     NbiaClient(srv.base_url).list_series(collection="C1")
"""

from __future__ import annotations

import copy
import io
import json
import random
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SOURCE_FILES = {"CT": "CT_small.dcm", "MR": "MR_small.dcm"}
PREFIX = "/nbia-api/services/v4/"

# Faults a series can be scripted with (each entry of ``faults`` is consumed by one getImage).
FAULTS = ("503", "429", "truncated", "slow", "404")


@dataclass
class Series:
    """The encoded files of one series plus its NBIA getSeries record."""

    uid: str
    patient_id: str
    modality: str
    files: dict[str, bytes]  # zip member name -> bytes
    datasets: list[Any] = field(default_factory=list)  # the datasets in sorted (position) order
    record: dict[str, Any] = field(default_factory=dict)


def make_series(modality: str = "CT", *, n_slices: int = 4, patient_id: str = "P1",
                series_uid: str | None = None, study_uid: str | None = None,
                gap: float = 2.5, slope: float | None = None, intercept: float | None = None,
                orientation: list[float] | None = None, pixel_spacing: list[float] | None = None,
                seed: int = 0, descending_instance_numbers: bool = True) -> Series:
    """Build a real ``n_slices`` series from pydicom's bundled CT/MR file; files shuffled.

    Slice k sits at ``IPP0 + k * gap * normal``; its stored pixels are the source pixels + 3k.
    Instance numbers run against the position order (so sorting by them would be wrong).
    """
    src = pydicom.dcmread(get_testdata_file(SOURCE_FILES[modality]))
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    if orientation is not None:
        src.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    if pixel_spacing is not None:
        src.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    if slope is not None:
        src.RescaleSlope = f"{slope:g}"
    if intercept is not None:
        src.RescaleIntercept = f"{intercept:g}"
    iop = np.array([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp0 = np.array([float(v) for v in src.ImagePositionPatient])
    base_pixels = src.pixel_array.astype(np.int16)
    datasets = []
    for k in range(n_slices):
        ds = copy.deepcopy(src)
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = (n_slices - k) if descending_instance_numbers else k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp0 + k * gap * normal]
        ds.SliceThickness = f"{abs(gap):g}"
        ds.PixelData = (base_pixels + 3 * k).astype(np.int16).tobytes()
        datasets.append(ds)
    order = list(range(n_slices))
    random.Random(seed).shuffle(order)
    files = {f"1-{i + 1:02d}.dcm": encode(datasets[k]) for i, k in enumerate(order)}
    record = {
        "SeriesInstanceUID": series_uid, "StudyInstanceUID": study_uid, "Modality": modality,
        "PatientID": patient_id, "SeriesDescription": f"{modality} test series",
        "ImageCount": n_slices, "Manufacturer": "pydicom test data",
        "BodyPartExamined": "HEAD", "FileSize": sum(len(b) for b in files.values()),
        "LicenseName": "test", "SeriesNumber": 1, "ProtocolName": "test",
    }
    return Series(series_uid, patient_id, modality, files, datasets, record)


def encode(ds: Any) -> bytes:
    """A dataset as DICOM Part 10 bytes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def non_image_copy(ds: Any, sop_class: str = "1.2.840.10008.5.1.4.1.1.88.11") -> Any:
    """A copy of ``ds`` turned into a non-image object (SR SOP class, PixelData removed)."""
    other = copy.deepcopy(ds)
    other.SOPClassUID = sop_class
    other.file_meta.MediaStorageSOPClassUID = sop_class
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    del other.PixelData
    return other


def build_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """Zip ``members`` (name -> bytes, names written verbatim) and optional symlink entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


class NbiaServer:
    """A local NBIA v4-shaped HTTP server (context manager). ``base_url`` ends with '/'."""

    def __init__(self) -> None:
        self._series: dict[str, tuple[str, Series, bytes]] = {}
        self._faults: dict[str, list[str]] = {}
        self._always: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.retry_after = "2"
        self.slow_seconds = 1.0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True)

    # --- setup -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{PREFIX}"

    def add_series(self, collection: str, series: Series, *, zip_bytes: bytes | None = None,
                   faults: tuple[str, ...] = (), always: str | None = None) -> None:
        """Serve ``series`` under ``collection``; ``faults`` are served first, one per getImage,
        then the real zip (``zip_bytes`` overrides it); ``always`` is served on every getImage."""
        for f in (*faults, *([always] if always else [])):
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}, expected one of {FAULTS}")
        data = zip_bytes if zip_bytes is not None else build_zip(series.files)
        with self._lock:
            self._series[series.uid] = (collection, series, data)
            self._faults[series.uid] = list(faults)
            if always:
                self._always[series.uid] = always

    def count(self, endpoint: str, uid: str | None = None) -> int:
        """How many requests hit ``endpoint`` (for ``uid`` when given)."""
        with self._lock:
            return sum(1 for ep, q in self.requests
                       if ep == endpoint and (uid is None or q.get("SeriesInstanceUID") == uid))

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "NbiaServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # --- request handling --------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if not url.path.startswith(PREFIX):
                    return self._send(404, b"not found", "text/plain")
                endpoint = url.path[len(PREFIX):]
                with server._lock:
                    server.requests.append((endpoint, query))
                if endpoint == "getSeries":
                    return self._get_series(query)
                if endpoint == "getImage":
                    return self._get_image(query)
                return self._send(404, b"unknown endpoint", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str,
                      headers: dict[str, str] | None = None, length: int | None = None) -> None:
                self.close_connection = True
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length",
                                     str(len(body) if length is None else length))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
                    pass

            def _get_series(self, q: dict[str, str]) -> None:
                with server._lock:
                    rows = [s.record | {"Collection": coll}
                            for coll, s, _ in server._series.values()
                            if ("Collection" not in q or q["Collection"] == coll)
                            and ("Modality" not in q or q["Modality"] == s.modality)
                            and ("PatientID" not in q or q["PatientID"] == s.patient_id)]
                self._send(200, json.dumps(rows).encode(), "application/json")

            def _get_image(self, q: dict[str, str]) -> None:
                uid = q.get("SeriesInstanceUID")
                if not uid:
                    return self._send(400, b"SeriesInstanceUID is required", "text/plain")
                with server._lock:
                    entry = server._series.get(uid)
                    fault = server._always.get(uid) or (
                        server._faults[uid].pop(0) if entry and server._faults[uid] else None)
                if entry is None or fault == "404":
                    return self._send(404, b"no such series", "text/plain")
                data = entry[2]
                if fault == "503":
                    return self._send(503, b"busy", "text/plain")
                if fault == "429":
                    return self._send(429, b"slow down", "text/plain",
                                      {"Retry-After": server.retry_after})
                if fault == "slow":
                    time.sleep(server.slow_seconds)
                if fault == "truncated":  # announce the full length, send half, hang up
                    return self._send(200, data[: len(data) // 2], "application/zip",
                                      length=len(data))
                self._send(200, data, "application/zip")

        return Handler
