"""components.ingest: phantom, SynthRAD-layout folder and TCIA sources; local and S3 outputs.

Real files, a real local NBIA v4 server (tests/nbia_server.py) and a real S3-protocol server
(moto on 127.0.0.1, fixtures from tests/test_storage.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components import storage
from components.ingest import main, run_ingest
from components.sources import TCIA_CACHE
from components.step import MANIFEST, StepInputError
from gan_core.data.nifti import load_volume, save_volume
from gan_core.data.phantom import write_cohort
from tests.nbia_server import NbiaServer, make_series
from tests.test_storage import SECRET, endpoint, s3  # noqa: F401 - pytest fixtures

REPO = Path(__file__).resolve().parents[1]
TINY = {"shape": (32, 32, 16), "spacing": (6.0, 6.0, 9.0)}


def _check_files(out: Path, manifest: dict) -> None:
    """Every listed file exists under ``out`` with the recorded sha256."""
    for rec in manifest["subjects"]:
        assert set(rec["files"]) == set(rec["sha256"])
        for key, rel in rec["files"].items():
            assert rel == f"subjects/{rec['id']}/{key}.nii.gz"
            assert storage.sha256_file(out / rel) == rec["sha256"][key]


# ---------------------------------------------------------------- phantom


def test_phantom_manifest_files_and_checksums(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    m = run_ingest("phantom", str(out), subjects=3, seed=4, lesion_prevalence=1.0, **TINY)
    assert json.loads((out / MANIFEST).read_text()) == m
    assert (out / storage.SUCCESS_MARKER).exists()
    assert m["step"] == "ingest" and m["code_version"]
    assert {"inputs", "params", "outputs", "counts", "timings"} <= set(m)
    assert m["inputs"] == {"source": "phantom"}
    assert m["params"]["shape"] == [32, 32, 16] and m["params"]["seed"] == 4
    assert [r["id"] for r in m["subjects"]] == ["phantom_000", "phantom_001", "phantom_002"]
    assert m["counts"] == {"subjects": 3, "failed": 0, "with_mask": 3, "with_labels": 3,
                           "with_lesion": 3}
    assert all(r["source"]["kind"] == "phantom" for r in m["subjects"])
    _check_files(out, m)
    cohort = json.loads((out / m["outputs"]["phantom_cohort"]).read_text())
    assert [s["id"] for s in cohort["subjects"]] == [r["id"] for r in m["subjects"]]
    ct = load_volume(out / "subjects/phantom_000/ct.nii.gz")
    assert ct.shape == (32, 32, 16) and ct.spacing == (6.0, 6.0, 9.0)

    again = run_ingest("phantom", str(tmp_path / "again"), subjects=3, seed=4,
                       lesion_prevalence=1.0, **TINY)
    assert [r["sha256"] for r in again["subjects"]] == [r["sha256"] for r in m["subjects"]]


def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StepInputError, match="unknown ingest source 'dicom'.*phantom, folder, tcia"):
        run_ingest("dicom", str(tmp_path / "x"))
    with pytest.raises(StepInputError, match="phantom.*shape"):
        run_ingest("phantom", str(tmp_path / "x"), shape=(8, 8, 8))
    with pytest.raises(StepInputError, match="collection is required"):
        run_ingest("tcia", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing published


# ---------------------------------------------------------------- folder


@pytest.fixture()
def synthrad(tmp_path: Path) -> Path:
    """A SynthRAD-layout root with 5 phantom subjects + an overview folder (not a subject)."""
    root = tmp_path / "synthrad"
    write_cohort(root, subjects=5, seed=2, **TINY)
    (root / "cohort.json").unlink()
    (root / "overview").mkdir()
    (root / "overview" / "1_brain_train.csv").write_text("id\n")
    for d in root.glob("phantom_*"):
        (d / "labels.nii.gz").unlink()
    return root


def test_folder_reports_bad_subjects_and_keeps_the_rest(synthrad: Path, tmp_path: Path) -> None:
    ct = synthrad / "phantom_001" / "ct.nii.gz"
    ct.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])  # truncated gzip
    (synthrad / "phantom_002" / "mask.nii.gz").unlink()  # optional: noted, subject kept
    mr = load_volume(synthrad / "phantom_003" / "mr.nii.gz")
    save_volume(synthrad / "phantom_003" / "mr.nii.gz", mr.array[:, :, :-1], affine=mr.affine)
    (synthrad / "phantom_004" / "mr.nii.gz").unlink()

    out = tmp_path / "raw"
    m = run_ingest("folder", str(out), folder=str(synthrad))
    assert [r["id"] for r in m["subjects"]] == ["phantom_000", "phantom_002"]
    failed = {f["id"]: f["reason"] for f in m["failed"]}
    assert set(failed) == {"phantom_001", "phantom_003", "phantom_004"}
    assert "truncated or corrupt" in failed["phantom_001"] and "ct.nii.gz" in failed["phantom_001"]
    assert "not on the same voxel grid" in failed["phantom_003"]
    assert "missing mr.nii.gz" in failed["phantom_004"]
    assert m["counts"] == {"subjects": 2, "failed": 3, "with_mask": 1, "with_labels": 0,
                           "with_lesion": 2}
    no_mask = next(r for r in m["subjects"] if r["id"] == "phantom_002")
    assert "mask" not in no_mask["files"] and any("no mask" in n for n in no_mask["notes"])
    _check_files(out, m)
    src = synthrad / "phantom_000" / "ct.nii.gz"
    assert (out / "subjects/phantom_000/ct.nii.gz").read_bytes() == src.read_bytes()
    assert m["subjects"][0]["source"] == {"kind": "folder",
                                          "path": str(synthrad / "phantom_000")}
    assert sorted(p.name for p in (out / "subjects").iterdir()) == ["phantom_000", "phantom_002"]


def test_folder_without_valid_subject_is_an_error(synthrad: Path, tmp_path: Path) -> None:
    for d in synthrad.glob("phantom_*"):
        (d / "ct.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "raw"
    with pytest.raises(StepInputError, match=rf"no valid subject under {synthrad} \(5 failed\)"):
        run_ingest("folder", str(out), folder=str(synthrad))
    assert not out.exists()
    with pytest.raises(StepInputError, match="cannot read .*absent"):
        run_ingest("folder", str(out), folder=str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StepInputError, match="no <subject>/mr.nii.gz"):
        run_ingest("folder", str(out), folder=str(empty))


# ---------------------------------------------------------------- tcia


def test_tcia_pairs_failures_and_resume(tmp_path: Path) -> None:
    with NbiaServer() as srv:
        ok = {}
        for pid in ("P1", "P2"):
            for mod in ("MR", "CT"):
                ok[pid, mod] = make_series(mod, n_slices=3, patient_id=pid)
                srv.add_series("COLL", ok[pid, mod])
        ok["P3", "MR"] = make_series("MR", n_slices=2, patient_id="P3")
        srv.add_series("COLL", ok["P3", "MR"])
        p4_mr, p4_ct = (make_series(m, n_slices=2, patient_id="P4") for m in ("MR", "CT"))
        srv.add_series("COLL", p4_mr)
        srv.add_series("COLL", p4_ct, always="404")
        srv.add_series("OTHER", make_series("CT", n_slices=2, patient_id="P9"))

        out = tmp_path / "raw"
        m = run_ingest("tcia", str(out), collection="COLL", base_url=srv.base_url)
        assert [r["id"] for r in m["subjects"]] == ["P1", "P2"]
        for rec in m["subjects"]:
            assert sorted(rec["files"]) == ["ct", "mr"]  # no mask yet: preprocess computes it
            assert rec["source"]["mr_series"] == ok[rec["id"], "MR"].uid
            assert rec["source"]["ct_series"] == ok[rec["id"], "CT"].uid
        _check_files(out, m)
        ct = load_volume(out / "subjects/P1/ct.nii.gz")
        assert ct.shape == (128, 128, 3) and ct.array.min() < -500  # HU, air present
        assert load_volume(out / "subjects/P1/mr.nii.gz").shape[2] == 3
        failed = {f["id"]: f for f in m["failed"]}
        assert set(failed) == {"P3", "P4"}
        assert "unpaired: no usable CT" in failed["P3"]["reason"]
        assert failed["P4"]["failed_series"][0]["series"] == p4_ct.uid
        assert "404" in failed["P4"]["failed_series"][0]["error"]
        assert m["outputs"]["tcia_cache"] == TCIA_CACHE and (out / TCIA_CACHE).is_dir()
        tm = json.loads((out / "tcia_manifest.json").read_text())
        assert tm["counts"] == m["outputs"]["tcia_counts"] == {
            "series_ok": 6, "series_failed": 1, "pairs": 2, "unpaired": 2}
        assert m["inputs"]["base_url"] == srv.base_url

        again = run_ingest("tcia", str(out), collection="COLL", base_url=srv.base_url)
        for s in ok.values():  # finished series come from the cache: one download each
            assert srv.count("getImage", s.uid) == 1
        assert [r["sha256"] for r in again["subjects"]] == [r["sha256"] for r in m["subjects"]]
        assert storage.is_complete(str(out)) and (out / TCIA_CACHE).is_dir()


def test_tcia_without_pairs_is_an_error(tmp_path: Path) -> None:
    with NbiaServer() as srv:
        srv.add_series("C", make_series("MR", n_slices=2, patient_id="P1"))
        with pytest.raises(StepInputError, match="collection 'C' .*no usable MR\\+CT pair.*P1"):
            run_ingest("tcia", str(tmp_path / "raw"), collection="C", base_url=srv.base_url,
                       cache_dir=str(tmp_path / "cache"))
        with pytest.raises(StepInputError, match="collection 'NOPE'.*no series"):
            run_ingest("tcia", str(tmp_path / "raw"), collection="NOPE", base_url=srv.base_url,
                       cache_dir=str(tmp_path / "cache2"))
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------- S3 output, CLI


def test_s3_output(s3: str, tmp_path: Path) -> None:
    m = run_ingest("phantom", s3, subjects=2, **TINY)
    files = storage.list_files(s3)
    assert storage.SUCCESS_MARKER in files and MANIFEST in files
    assert "subjects/phantom_001/mr.nii.gz" in files and "subjects/cohort.json" in files
    assert storage.read_json(storage.join(s3, MANIFEST)) == m
    local = storage.download_dir(s3, tmp_path / "copy")
    _check_files(local, m)
    assert SECRET not in storage.read_text(storage.join(s3, MANIFEST))

    with NbiaServer() as srv:  # tcia to S3: the working folder stays local (cache_dir)
        for mod in ("MR", "CT"):
            srv.add_series("C", make_series(mod, n_slices=2, patient_id="P1"))
        uri = storage.join(s3, "tcia")
        t = run_ingest("tcia", uri, collection="C", base_url=srv.base_url,
                       cache_dir=str(tmp_path / "cache"))
    assert t["outputs"]["tcia_cache"] is None
    assert not any(f.startswith(TCIA_CACHE) for f in storage.list_files(uri))
    assert "subjects/P1/ct.nii.gz" in storage.list_files(uri)
    assert (tmp_path / "cache" / "tcia_manifest.json").exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    rc = main(["--source", "phantom", "--output-uri", str(out), "--subjects", "2",
               "--shape", "32,32,16", "--spacing", "6,6,9", "--misalign-mm", "3"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["subjects"] == 2 and printed["output_uri"] == str(out)
    assert json.loads((out / MANIFEST).read_text())["params"]["misalign_mm"] == 3.0

    rc = main(["--source", "folder", "--output-uri", str(tmp_path / "x"),
               "--folder", str(tmp_path / "absent")])
    assert rc == 2 and "error: folder ingest: cannot read" in capsys.readouterr().err  # bad input

    res = subprocess.run([sys.executable, "-m", "components.ingest", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--source {phantom,folder,tcia}" in res.stdout


def test_folder_from_s3(s3: str, synthrad: Path, tmp_path: Path) -> None:
    shutil.rmtree(synthrad / "phantom_003")
    shutil.rmtree(synthrad / "phantom_004")
    storage.upload_dir(synthrad, storage.join(s3, "synthrad"))
    m = run_ingest("folder", str(tmp_path / "raw"), folder=storage.join(s3, "synthrad"))
    assert [r["id"] for r in m["subjects"]] == ["phantom_000", "phantom_001", "phantom_002"]
    assert m["subjects"][0]["source"]["path"] == storage.join(s3, "synthrad", "phantom_000")
    a = load_volume(tmp_path / "raw/subjects/phantom_001/mr.nii.gz").array
    assert np.array_equal(a, load_volume(synthrad / "phantom_001/mr.nii.gz").array)


@pytest.mark.parametrize("module", ["components.sources", "components.ingest"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
