"""NBIA v4 client and TCIA ingest against a real local HTTP server (tests/nbia_server.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from components.tcia import (
    MANIFEST_NAME,
    ArchiveError,
    NbiaClient,
    NbiaError,
    NbiaHTTPError,
    UnsafeZipError,
    _parse_retry_after,
    ingest_tcia,
    main,
    safe_extract,
    sha256_file,
)
from tests.nbia_server import NbiaServer, build_zip, encode, make_series, non_image_copy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with NbiaServer() as srv:
        yield srv


def _client(srv: NbiaServer, sleeps: list[float] | None = None, **kw) -> NbiaClient:
    return NbiaClient(srv.base_url, sleep=(sleeps.append if sleeps is not None else lambda s: None),
                      **{"timeout": 5, **kw})


def test_list_series_filters(server: NbiaServer) -> None:
    server.add_series("C1", make_series("CT", n_slices=1, patient_id="P1"))
    server.add_series("C1", make_series("MR", n_slices=1, patient_id="P1"))
    server.add_series("C1", make_series("CT", n_slices=1, patient_id="P2"))
    server.add_series("C2", make_series("MR", n_slices=1, patient_id="P3"))
    client = NbiaClient(server.base_url.rstrip("/"))  # base URL without trailing slash works
    assert len(client.list_series(collection="C1")) == 3
    mr = client.list_series(collection="C1", modality="MR")
    assert [(r["PatientID"], r["Modality"], r["Collection"]) for r in mr] == [("P1", "MR", "C1")]
    assert {r["Modality"] for r in client.list_series("C1", patient_id="P1")} == {"CT", "MR"}
    assert client.list_series(collection="nope") == []
    assert len(client.list_series()) == 4
    endpoint, query = server.requests[1]
    assert endpoint == "getSeries"
    assert query == {"Collection": "C1", "Modality": "MR", "format": "json"}


@pytest.mark.parametrize("fault", ["503", "429"])
def test_download_retries_transient_status(server: NbiaServer, tmp_path: Path,
                                           fault: str) -> None:
    s = make_series("CT", n_slices=2)
    server.add_series("C", s, faults=(fault,))
    sleeps: list[float] = []
    out = _client(server, sleeps).download_series(s.uid, tmp_path / "s.zip")
    assert server.count("getImage", s.uid) == 2
    assert out.read_bytes() == build_zip(s.files)
    assert len(sleeps) == 1
    if fault == "429":
        assert sleeps == [2.0]  # Retry-After honoured
    else:
        assert 0.5 <= sleeps[0] <= 0.55  # backoff + small jitter


def test_retry_after_http_date() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 <= _parse_retry_after(format_datetime(when, usegmt=True)) <= 31
    assert _parse_retry_after("7") == 7.0
    assert _parse_retry_after(None) is None and _parse_retry_after("soon") is None


def test_truncated_download_retried(server: NbiaServer, tmp_path: Path) -> None:
    s = make_series("MR", n_slices=2)
    server.add_series("C", s, faults=("truncated",))
    out = _client(server).download_series(s.uid, tmp_path / "s.zip")
    assert server.count("getImage", s.uid) == 2
    assert zipfile.ZipFile(out).namelist() == list(s.files)


def test_truncated_always_gives_clear_error(server: NbiaServer, tmp_path: Path) -> None:
    s = make_series("MR", n_slices=2)
    server.add_series("C", s, always="truncated")
    sleeps: list[float] = []
    with pytest.raises(NbiaError, match=rf"getImage\?SeriesInstanceUID={s.uid}.*3 attempt"):
        _client(server, sleeps, max_retries=2).download_series(s.uid, tmp_path / "s.zip")
    assert server.count("getImage", s.uid) == 3 and len(sleeps) == 2
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_client_error_fails_at_once(server: NbiaServer, tmp_path: Path) -> None:
    sleeps: list[float] = []
    with pytest.raises(NbiaHTTPError, match=r"getImage\?SeriesInstanceUID=1\.2\.3.*HTTP 404") \
            as err:
        _client(server, sleeps).download_series("1.2.3", tmp_path / "s.zip")
    assert err.value.status == 404
    assert server.count("getImage") == 1 and sleeps == []


def test_connection_errors_back_off_exponentially(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    client = NbiaClient(f"http://127.0.0.1:{port}/v4/", sleep=sleeps.append, max_retries=3,
                        backoff=0.5, timeout=2)
    with pytest.raises(NbiaError, match=rf"127\.0\.0\.1:{port}/v4/getSeries.*4 attempt.*Connection"):
        client.list_series("C")
    assert len(sleeps) == 3
    for i, delay in enumerate(sleeps):
        assert 0.5 * 2 ** i <= delay <= 0.55 * 2 ** i


def test_read_timeout_retried(server: NbiaServer, tmp_path: Path) -> None:
    s = make_series("CT", n_slices=1)
    server.slow_seconds = 1.0
    server.add_series("C", s, faults=("slow",))
    out = _client(server, timeout=0.25).download_series(s.uid, tmp_path / "s.zip")
    assert server.count("getImage", s.uid) == 2 and out.exists()


@pytest.mark.parametrize("member,reason", [
    ("../evil.dcm", "'..' path component"),
    ("a/../../evil.dcm", "'..' path component"),
    ("/abs/evil.dcm", "absolute path"),
    ("C:/evil.dcm", "absolute path"),
])
def test_safe_extract_rejects_zip_slip(tmp_path: Path, member: str, reason: str) -> None:
    zpath = tmp_path / "bad.zip"
    zpath.write_bytes(build_zip({"ok.dcm": b"x", member: b"evil"}))
    dest = tmp_path / "sub" / "out"
    with pytest.raises(UnsafeZipError, match=rf"{member!r}: {reason}"):
        safe_extract(zpath, dest)
    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.dcm"))
    assert not (tmp_path / "sub").exists()  # members are checked before anything is written


def test_safe_extract_rejects_symlink_and_bad_zip(tmp_path: Path) -> None:
    zpath = tmp_path / "link.zip"
    zpath.write_bytes(build_zip({"ok.dcm": b"x"}, symlinks={"passwd": "/etc/passwd"}))
    with pytest.raises(UnsafeZipError, match="'passwd': symbolic link"):
        safe_extract(zpath, tmp_path / "out")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="junk.zip: not a readable zip"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "out")


def test_safe_extract_replaces_destination(tmp_path: Path) -> None:
    zpath = tmp_path / "ok.zip"
    zpath.write_bytes(build_zip({"a.dcm": b"1", "sub/b.dcm": b"2"}))
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale.dcm").write_bytes(b"old")
    files = safe_extract(zpath, dest)
    assert files == [dest / "a.dcm", dest / "sub" / "b.dcm"]
    assert (dest / "sub" / "b.dcm").read_bytes() == b"2" and not (dest / "stale.dcm").exists()


def _cohort(srv: NbiaServer) -> dict[str, object]:
    """P1: MR(503 once) + CT(429 once); P2: MR + CT(truncated once, with an SR object);
    P3: MR only; P4: MR + CT served as a zip-slip archive."""
    s = {
        "p1_mr": make_series("MR", n_slices=3, patient_id="P1", seed=1),
        "p1_ct": make_series("CT", n_slices=4, patient_id="P1", seed=2, slope=0.5),
        "p2_mr": make_series("MR", n_slices=2, patient_id="P2", seed=3),
        "p2_ct": make_series("CT", n_slices=3, patient_id="P2", seed=4),
        "p3_mr": make_series("MR", n_slices=2, patient_id="P3", seed=5),
        "p4_mr": make_series("MR", n_slices=2, patient_id="P4", seed=6),
        "p4_ct": make_series("CT", n_slices=2, patient_id="P4", seed=7),
    }
    srv.add_series("COLL", s["p1_mr"], faults=("503",))
    srv.add_series("COLL", s["p1_ct"], faults=("429",))
    srv.add_series("COLL", s["p2_mr"])
    with_sr = dict(s["p2_ct"].files)
    with_sr["sr.dcm"] = encode(non_image_copy(s["p2_ct"].datasets[0]))
    srv.add_series("COLL", s["p2_ct"], zip_bytes=build_zip(with_sr), faults=("truncated",))
    srv.add_series("COLL", s["p3_mr"])
    srv.add_series("COLL", s["p4_mr"])
    srv.add_series("COLL", s["p4_ct"],
                   zip_bytes=build_zip({**s["p4_ct"].files, "../evil.dcm": b"evil"}))
    srv.add_series("OTHER", make_series("CT", n_slices=1, patient_id="P9"))
    return s


def test_ingest_pairs_faults_and_resume(server: NbiaServer, tmp_path: Path) -> None:
    s = _cohort(server)
    sleeps: list[float] = []
    out = tmp_path / "raw"
    manifest = ingest_tcia(out, collection="COLL", client=_client(server, sleeps))

    assert json.loads((out / MANIFEST_NAME).read_text()) == manifest
    series = manifest["series"]
    assert set(series) == {x.uid for x in s.values()}  # the OTHER collection is not fetched
    assert {p["patient"]: (p["mr_series"], p["ct_series"]) for p in manifest["pairs"]} == {
        "P1": (s["p1_mr"].uid, s["p1_ct"].uid), "P2": (s["p2_mr"].uid, s["p2_ct"].uid)}
    unpaired = {u["patient"]: u for u in manifest["unpaired"]}
    assert set(unpaired) == {"P3", "P4"}
    assert unpaired["P3"]["missing"] == ["CT"] and unpaired["P3"]["failed_series"] == []
    assert unpaired["P4"]["missing"] == ["CT"]
    assert unpaired["P4"]["failed_series"] == [s["p4_ct"].uid]
    bad = series[s["p4_ct"].uid]
    assert bad["status"] == "failed" and "evil.dcm" in bad["error"] and "zip-slip" in bad["error"]
    assert manifest["counts"] == {"series_ok": 6, "series_failed": 1, "pairs": 2, "unpaired": 2}
    # retries really happened on the wire (503, 429, truncated: two requests each)
    for key in ("p1_mr", "p1_ct", "p2_ct"):
        assert server.count("getImage", s[key].uid) == 2
    assert 2.0 in sleeps and len(sleeps) == 3
    # the SR object inside the CT zip is skipped and reported
    assert [f["file"] for f in series[s["p2_ct"].uid]["skipped_files"]] == ["sr.dcm"]

    # NIfTI files: right place, checksum, HU content
    p1 = next(p for p in manifest["pairs"] if p["patient"] == "P1")
    assert p1["ct"] == f"P1/CT_{s['p1_ct'].uid}.nii.gz"
    ct = nib.load(out / p1["ct"])
    assert ct.shape == (128, 128, 4)
    expected = [ds.pixel_array.astype(np.float64) * 0.5 - 1024 for ds in s["p1_ct"].datasets]
    np.testing.assert_allclose(np.asarray(ct.dataobj)[:, :, 3], expected[3].T)
    for entry in series.values():
        if entry["status"] == "ok":
            assert sha256_file(out / entry["nifti"]) == entry["sha256"]
    assert not (out / ".tcia_cache").exists()

    # rerun: only the failed series is fetched again; nothing else changes
    before = server.count("getImage")
    text = (out / MANIFEST_NAME).read_text()
    again = ingest_tcia(out, collection="COLL", client=_client(server))
    assert server.count("getImage") == before + 1
    assert server.count("getImage", s["p4_ct"].uid) == 2
    assert again["pairs"] == manifest["pairs"]
    old, new = json.loads(text), json.loads((out / MANIFEST_NAME).read_text())
    old["series"][s["p4_ct"].uid].pop("seconds"), new["series"][s["p4_ct"].uid].pop("seconds")
    assert old == new


def test_ingest_resume_downloads_nothing_and_redoes_corrupted(server: NbiaServer,
                                                               tmp_path: Path) -> None:
    mr = make_series("MR", n_slices=2, patient_id="P1")
    ct = make_series("CT", n_slices=2, patient_id="P1")
    server.add_series("C", mr)
    server.add_series("C", ct)
    out = tmp_path / "raw"
    first = ingest_tcia(out, collection="C", client=_client(server))
    assert server.count("getImage") == 2 and first["counts"]["pairs"] == 1
    text = (out / MANIFEST_NAME).read_text()

    ingest_tcia(out, collection="C", client=_client(server))
    assert server.count("getImage") == 2  # nothing downloaded
    assert (out / MANIFEST_NAME).read_text() == text  # manifest byte-identical

    (out / first["pairs"][0]["ct"]).write_bytes(b"corrupted")  # checksum no longer matches
    ingest_tcia(out, collection="C", client=_client(server))
    assert server.count("getImage", ct.uid) == 2 and server.count("getImage", mr.uid) == 1
    assert json.loads((out / MANIFEST_NAME).read_text())["series"][ct.uid]["sha256"] == \
        first["series"][ct.uid]["sha256"]

    with pytest.raises(ValueError, match="holds collection 'C'"):
        ingest_tcia(out, collection="D", client=_client(server))


def test_ingest_patient_and_modality_filter(server: NbiaServer, tmp_path: Path) -> None:
    a = make_series("MR", n_slices=1, patient_id="A")
    b = make_series("MR", n_slices=1, patient_id="B")
    c = make_series("CT", n_slices=1, patient_id="A")
    for x in (a, b, c):
        server.add_series("C", x)
    m = ingest_tcia(tmp_path, collection="C", modalities=("mr",), patient_ids=["A"],
                    client=_client(server))
    assert set(m["series"]) == {a.uid}
    queries = [q for ep, q in server.requests if ep == "getSeries"]
    assert queries == [{"Collection": "C", "Modality": "MR", "PatientID": "A", "format": "json"}]
    with pytest.raises(ValueError, match="no series"):
        ingest_tcia(tmp_path / "x", collection="C", modalities=("PT",), client=_client(server))


def test_cli(server: NbiaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.add_series("C", make_series("MR", n_slices=1, patient_id="A"))
    server.add_series("C", make_series("CT", n_slices=1, patient_id="A"))
    rc = main(["--out", str(tmp_path), "--collection", "C", "--modality", "MR",
               "--modality", "CT", "--patient", "A", "--base-url", server.base_url])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == 1
    helptext = subprocess.run([sys.executable, "-m", "components.tcia", "--help"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    for flag in ("--out", "--collection", "--modality", "--patient", "--base-url"):
        assert flag in helptext
