"""components.preprocess on real phantom cohorts: registration, resampling, masks, splits, shards.

The cohort is made with a planted rigid MR misalignment (``misalign_mm=6``); the phantom's
``cohort.json`` records each subject's matrix (CT world point -> MR world point, RAS mm), which
the registration must recover.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from components import storage
from components.ingest import run_ingest
from components.preprocess import main, run_preprocess
from components.step import MANIFEST, StepInputError
from components.subject_prep import preprocess_subject
from gan_core.data.nifti import load_volume
from gan_core.data.register import RegistrationError, nifti_affine, register_mr_to_ct, sitk_image, to_xyz
from gan_core.data.shards import Shards, SubjectFiles
from tests.ray_cluster import SharedCluster
from tests.test_storage import endpoint, s3  # noqa: F401 - pytest fixtures

pytest_plugins = ("tests.ray_cluster",)  # shared_cluster: one cluster for every module using Ray

SPACING = (4.0, 4.0, 6.0)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pp") / "raw"
    run_ingest("phantom", str(out), subjects=6, seed=0, shape=(48, 48, 24), spacing=SPACING,
               lesion_prevalence=0.5, misalign_mm=6.0)
    return out


@pytest.fixture(scope="module")
def rigid(raw: Path) -> tuple[Path, dict]:
    out = raw.parent / "rigid"
    return out, run_preprocess(str(raw), str(out), spacing=None, register="rigid", seed=0)


def _nmi(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Normalised mutual information (H(a) + H(b)) / H(a, b), independent of SimpleITK."""
    h, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = h / h.sum()
    ent = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    return (ent(p.sum(0)) + ent(p.sum(1))) / ent(p)


def _world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# ---------------------------------------------------------------- registration


def test_registration_recovers_the_planted_misalignment(raw: Path,
                                                        rigid: tuple[Path, dict]) -> None:
    out, m = rigid
    planted = {s["id"]: np.array(s["meta"]["misalignment"]["matrix"])
               for s in json.loads((raw / "subjects/cohort.json").read_text())["subjects"]}
    assert len(m["subjects"]) == 6 and not m["failed"]
    assert m["counts"]["registration_accepted"] == 6
    for rec in m["subjects"]:
        reg = rec["registration"]
        truth = planted[rec["id"]]
        assert np.abs(truth[:3, 3]).max() > 1.5  # there is something to recover
        assert reg["accepted"] and reg["flag"] is None and reg["iterations"] > 0
        assert reg["metric_after"] < reg["metric_before"] - 0.05  # -MI: lower is better
        assert reg["transform"]["type"] == "Euler3DTransform"
        assert len(reg["transform"]["parameters"]) == 6
        found = np.array(reg["transform"]["matrix_ras"])
        # translation (the volume is centred on the world origin) within 1.5 voxel per axis
        assert np.all(np.abs(found[:3, 3] - truth[:3, 3]) < 1.5 * np.array(SPACING)), rec["id"]
        # displacement error over the body: much smaller than doing nothing
        ct = load_volume(raw / f"subjects/{rec['id']}/ct.nii.gz")
        pts = _world(ct.affine, load_volume(raw / f"subjects/{rec['id']}/mask.nii.gz").array)
        moved = lambda mat: pts @ mat[:3, :3].T + mat[:3, 3]  # noqa: E731
        err = np.linalg.norm(moved(found) - moved(truth), axis=1).mean()
        err_identity = np.linalg.norm(pts - moved(truth), axis=1).mean()
        assert err < 0.35 * err_identity and err < 0.5 * min(SPACING), (err, err_identity)
        # independent check: MR/CT mutual information goes up vs the unregistered MR
        ct_out = load_volume(out / rec["files"]["ct"]).array
        mr_out = load_volume(out / rec["files"]["mr"]).array
        mr_in = load_volume(raw / f"subjects/{rec['id']}/mr.nii.gz").array
        assert _nmi(mr_out, ct_out) > _nmi(mr_in, ct_out) + 0.01


def test_registration_is_deterministic(raw: Path, rigid: tuple[Path, dict]) -> None:
    out, m = rigid
    again = run_preprocess(str(raw), str(raw.parent / "rigid2"), spacing=None, register="rigid")
    assert [r["sha256"] for r in again["subjects"]] == [r["sha256"] for r in m["subjects"]]
    assert [r["registration"]["transform"] for r in again["subjects"]] == \
        [r["registration"]["transform"] for r in m["subjects"]]
    assert again["outputs"]["shards"] == m["outputs"]["shards"]  # shard checksums too


@pytest.mark.parametrize("sid", ["phantom_000", "phantom_005"])
def test_affine_mode_refines_rigid(raw: Path, sid: str) -> None:
    ct = sitk.ReadImage(str(raw / f"subjects/{sid}/ct.nii.gz"), sitk.sitkFloat32)
    mr = sitk.ReadImage(str(raw / f"subjects/{sid}/mr.nii.gz"), sitk.sitkFloat32)
    _, rig = register_mr_to_ct(ct, mr, mode="rigid")
    t, aff = register_mr_to_ct(ct, mr, mode="affine")
    assert aff["metric_after"] <= rig["metric_after"] < aff["metric_before"]
    assert aff["iterations"] > rig["iterations"]  # the affine stage ran
    if aff["note"] is None:  # the refinement helped: a 12-parameter affine is applied
        assert t.GetName() == "AffineTransform" and len(aff["transform"]["parameters"]) == 12
    else:  # it did not: the rigid solution is kept
        assert "rigid result kept" in aff["note"]
        assert aff["transform"] == rig["transform"]
    _, none = register_mr_to_ct(ct, mr, mode="none")
    assert none["metric_after"] == none["metric_before"] == rig["metric_before"]
    assert np.allclose(none["transform"]["matrix_ras"], np.eye(4))
    with pytest.raises(RegistrationError, match="unknown mode 'bspline'"):
        register_mr_to_ct(ct, mr, mode="bspline")


def test_mr_on_another_grid_and_field_of_view(raw: Path, tmp_path: Path) -> None:
    """TCIA-like pair: MR with its own spacing and a shifted, smaller field of view."""
    sid = "phantom_003"
    truth = next(s for s in json.loads((raw / "subjects/cohort.json").read_text())["subjects"]
                 if s["id"] == sid)["meta"]["misalignment"]["matrix"]
    mr = sitk.ReadImage(str(raw / f"subjects/{sid}/mr.nii.gz"), sitk.sitkFloat32)
    grid = sitk.Image([52, 44, 22], sitk.sitkFloat32)
    grid.SetSpacing((3.0, 3.5, 5.5))
    grid.SetDirection(mr.GetDirection())
    grid.SetOrigin((75.0, 70.0, -52.0))  # LPS; centre ~ (-1.5, -5.3, 5.8) mm off the CT's
    mr_file = tmp_path / "mr.nii.gz"
    sitk.WriteImage(sitk.Resample(mr, grid, sitk.Euler3DTransform(), sitk.sitkLinear, 0.0),
                    str(mr_file))
    rec = preprocess_subject(sid, {"mr": mr_file, "ct": raw / f"subjects/{sid}/ct.nii.gz"},
                             tmp_path / "out", spacing=None, register="rigid")
    reg = rec["registration"]
    assert reg["accepted"] and reg["metric_after"] < reg["metric_before"]
    found = np.array(reg["transform"]["matrix_ras"])
    assert np.all(np.abs(found[:3, 3] - np.array(truth)[:3, 3]) < 1.5 * np.array(SPACING))
    out_mr = load_volume(rec["written"]["mr"])
    assert out_mr.shape == (48, 48, 24)
    assert np.allclose(out_mr.affine, load_volume(raw / f"subjects/{sid}/ct.nii.gz").affine)


# ---------------------------------------------------------------- grids, masks, files


def test_outputs_on_the_ct_grid_with_ingest_masks(raw: Path, rigid: tuple[Path, dict]) -> None:
    out, m = rigid
    for rec in m["subjects"]:
        sid = rec["id"]
        assert set(rec["files"]) >= {"mr", "ct", "mask", "lesion", "labels"}
        for key, rel in rec["files"].items():
            assert storage.sha256_file(out / rel) == rec["sha256"][key]
        ct = nib.load(out / rec["files"]["ct"])
        src = load_volume(raw / f"subjects/{sid}/ct.nii.gz")
        assert ct.get_data_dtype() == np.int16 and np.allclose(ct.affine, src.affine)
        hu = np.asarray(ct.dataobj)
        assert hu.min() >= -1024 and hu.max() <= 3000
        assert np.array_equal(hu, np.clip(src.array, -1024, 3000))  # same grid: values kept
        for key in ("lesion", "labels"):
            assert np.array_equal(load_volume(out / rec["files"][key]).array,
                                  load_volume(raw / f"subjects/{sid}/{key}.nii.gz").array)
        # the ingest mask, less the body voxels the registered MR does not cover (counted)
        mask = load_volume(out / rec["files"]["mask"]).array > 0
        ingest = load_volume(raw / f"subjects/{sid}/mask.nii.gz").array > 0
        assert not (mask & ~ingest).any()
        assert (ingest & ~mask).sum() == rec["outside_fov_voxels"]
        assert rec["mask_source"] == "ingest"
    assert m["counts"]["computed_masks"] == 0
    assert m["counts"]["outside_fov_voxels"] == sum(r["outside_fov_voxels"] for r in m["subjects"])


def test_resampling_to_a_new_spacing(raw: Path, rigid: tuple[Path, dict]) -> None:
    out = raw.parent / "coarse"
    m = run_preprocess(str(raw), str(out), spacing=(6.0, 6.0, 9.0), register="none", seed=0)
    assert m["splits"] == rigid[1]["splits"]  # same ids + seed -> same split, run to run
    rec = m["subjects"][0]
    assert rec["shape"] == [32, 32, 16] and rec["spacing"] == [6.0, 6.0, 9.0]
    img = nib.load(out / rec["files"]["mr"])
    assert img.shape == (32, 32, 16)
    # the 48x48x24 @ 4x4x6 mm CT is centred on the origin; so is the new grid
    expected = np.diag([6.0, 6.0, 9.0, 1.0])
    expected[:3, 3] = [-93.0, -93.0, -67.5]
    assert np.allclose(img.affine, expected) and np.allclose(rec["affine"], expected)
    back = sitk.ReadImage(str(out / rec["files"]["ct"]))
    assert back.GetSize() == (32, 32, 16) and np.allclose(back.GetOrigin(), (93.0, 93.0, -67.5))
    mask = load_volume(out / rec["files"]["mask"]).array
    src_mask = load_volume(raw / "subjects/phantom_000/mask.nii.gz").array
    vox = np.prod(SPACING) / (6.0 * 6.0 * 9.0)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert abs(mask.sum() - src_mask.sum() * vox) < 0.1 * src_mask.sum() * vox  # same volume
    assert m["params"]["spacing"] == [6.0, 6.0, 9.0] and m["params"]["register"] == "none"
    assert all(r["registration"]["iterations"] == 0 for r in m["subjects"])


def test_nifti_affine_matches_simpleitk_writer(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3))
    img.SetSpacing((1.5, 2.0, 3.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    rot = sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix()  # oblique direction
    img.SetDirection(rot)
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(img, str(path))
    ref = nib.load(path)
    assert np.allclose(nifti_affine(img), ref.affine, atol=1e-4)
    assert np.array_equal(to_xyz(img), np.asarray(ref.dataobj))
    back = sitk_image(to_xyz(img), nifti_affine(img))  # and the way back
    assert np.allclose(back.GetDirection(), img.GetDirection(), atol=1e-9)
    assert np.allclose(back.GetOrigin(), img.GetOrigin())
    assert np.allclose(back.GetSpacing(), img.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(RegistrationError, match="sheared"):
        sitk_image(np.zeros((2, 2, 2)), sheared)


def test_computed_body_mask_when_ingest_has_none(raw: Path, tmp_path: Path) -> None:
    d = raw / "subjects/phantom_001"
    rec = preprocess_subject("s", {"mr": d / "mr.nii.gz", "ct": d / "ct.nii.gz"},
                             tmp_path / "s", spacing=None, register="none")
    assert rec["mask_source"].startswith("computed: CT > -500 HU")
    mask = load_volume(rec["written"]["mask"]).array > 0
    truth = load_volume(d / "mask.nii.gz").array > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9
    assert sorted(rec["written"]) == ["ct", "mask", "mr"]


# ---------------------------------------------------------------- splits and shards


def test_split_by_subject_and_shards(rigid: tuple[Path, dict]) -> None:
    out, m = rigid
    splits = m["splits"]
    ids = sorted(r["id"] for r in m["subjects"])
    assert sorted(sum(splits.values(), [])) == ids  # every subject in exactly one split
    assert [len(splits[k]) for k in ("train", "val", "test")] == [4, 1, 1]
    assert {r["id"]: r["split"] for r in m["subjects"]} == \
        {i: k for k, v in splits.items() for i in v}
    inplanes = set()
    for name, ids_ in splits.items():
        info = m["outputs"]["shards"][name]
        shards = Shards(out / info["path"])
        assert [s["id"] for s in shards.subjects] == ids_
        assert shards.arrays["ct"].shape[0] == info["n_slices"] == 24 * len(ids_)
        assert -1.0 <= float(shards.arrays["ct"].min()) and float(shards.arrays["ct"].max()) <= 1.0
        inplanes.add(tuple(shards.index["inplane"]))
        for f, digest in info["sha256"].items():
            assert storage.sha256_file(out / info["path"] / f) == digest
        src = SubjectFiles(**shards.subjects[0]["source"])
        assert not Path(src.mr).is_absolute()  # relative to the shard dir: output is movable
        assert (shards.dir / src.mr).resolve() == (out / "subjects" / ids_[0] / "mr.nii.gz")
    assert inplanes == {(48, 48)} and m["outputs"]["inplane"] == [48, 48]


def test_inplane_and_other_seed(raw: Path) -> None:
    m = run_preprocess(str(raw), str(raw.parent / "seed7"), spacing=(8.0, 8.0, 12.0),
                       register="none", seed=7, inplane=(32, 28), split=(0.5, 0.5, 0))
    assert m["splits"]["test"] == [] and "test" not in m["outputs"]["shards"]
    assert len(m["splits"]["train"]) == 3 and len(m["splits"]["val"]) == 3
    assert Shards(raw.parent / "seed7/shards/val").index["inplane"] == [32, 28]
    assert m["params"]["seed"] == 7 and m["params"]["inplane"] == [32, 28]


# ---------------------------------------------------------------- bad input


def test_wrong_previous_step_is_a_clear_error(raw: Path, rigid: tuple[Path, dict],
                                              tmp_path: Path) -> None:
    out, _ = rigid
    wrong = rf"{out}/manifest.json: field 'step' is 'preprocess', expected 'ingest'"
    with pytest.raises(StepInputError, match=wrong):
        run_preprocess(str(out), str(tmp_path / "x"))
    with pytest.raises(StepInputError, match=rf"{tmp_path}/absent/manifest.json: not found \(expected the output of step 'ingest'\)"):
        run_preprocess(str(tmp_path / "absent"), str(tmp_path / "x"))
    broken = tmp_path / "broken"
    shutil.copytree(raw, broken)
    doc = json.loads((broken / MANIFEST).read_text())
    del doc["subjects"]
    (broken / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(StepInputError, match="missing field 'subjects'"):
        run_preprocess(str(broken), str(tmp_path / "x"))
    doc["subjects"] = [{"id": "a", "files": {"mr": "../../etc/passwd", "ct": "x"}}]
    (broken / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(StepInputError, match=r"subjects\[0\] \(a\): files.mr .* relative path"):
        run_preprocess(str(broken), str(tmp_path / "x"))
    shutil.copy(raw / MANIFEST, broken / MANIFEST)
    (broken / storage.SUCCESS_MARKER).unlink()
    with pytest.raises(StepInputError, match="no _SUCCESS marker.*incomplete"):
        run_preprocess(str(broken), str(tmp_path / "x"))
    with pytest.raises(StepInputError, match="register: 'elastic'"):
        run_preprocess(str(raw), str(tmp_path / "x"), register="elastic")
    with pytest.raises(StepInputError, match="spacing: expected 3 positive"):
        run_preprocess(str(raw), str(tmp_path / "x"), spacing=(1, 0, 1))
    assert not (tmp_path / "x").exists()


def test_bad_subjects_are_reported_and_the_rest_go_on(raw: Path, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    shutil.copytree(raw, src)
    mr = src / "subjects/phantom_001/mr.nii.gz"
    mr.write_bytes(mr.read_bytes()[:200])  # truncated: checksum no longer matches
    ct = src / "subjects/phantom_002/ct.nii.gz"
    ct.write_bytes(ct.read_bytes()[:300])
    doc = json.loads((src / MANIFEST).read_text())  # ... and one whose checksum was updated
    doc["subjects"][2]["sha256"]["ct"] = storage.sha256_file(ct)
    (src / MANIFEST).write_text(json.dumps(doc))
    m = run_preprocess(str(src), str(tmp_path / "out"), spacing=(8.0, 8.0, 12.0),
                       register="none")
    failed = {f["id"]: f["reason"] for f in m["failed"]}
    assert set(failed) == {"phantom_001", "phantom_002"}
    assert "sha256 differs from the ingest manifest" in failed["phantom_001"]
    assert "phantom_002 CT file" in failed["phantom_002"] and "ct.nii.gz" in failed["phantom_002"]
    assert m["counts"]["subjects"] == 4 and m["counts"]["failed"] == 2
    assert sorted(sum(m["splits"].values(), [])) == ["phantom_000", "phantom_003", "phantom_004",
                                                      "phantom_005"]
    assert not (tmp_path / "out/subjects/phantom_001").exists()


# ---------------------------------------------------------------- S3 and CLI


def test_s3_in_s3_out(s3: str, tmp_path: Path) -> None:
    raw, processed = storage.join(s3, "raw"), storage.join(s3, "processed")
    run_ingest("phantom", raw, subjects=3, shape=(32, 32, 16), spacing=(6.0, 6.0, 9.0),
               misalign_mm=4.0)
    m = run_preprocess(raw, processed, spacing=None, register="rigid")
    assert storage.is_complete(processed)
    files = storage.list_files(processed)
    assert {"manifest.json", "shards/train/index.json", "shards/test/ct.npy",
            "subjects/phantom_000/mr.nii.gz"} <= set(files)
    assert storage.read_json(storage.join(processed, MANIFEST)) == m
    assert m["inputs"]["input_uri"] == raw
    local = storage.download_dir(processed, tmp_path / "copy")
    shards = Shards(local / "shards/train")
    src = SubjectFiles(**shards.subjects[0]["source"])
    assert load_volume(shards.dir / src.ct).shape == (32, 32, 16)


def test_cli(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(["--input-uri", str(raw), "--output-uri", str(out), "--spacing", "8,8,12",
               "--register", "none", "--split", "0.5,0.25,0.25", "--seed", "3",
               "--inplane", "24,24"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["subjects"] == 6 and [printed[k] for k in ("train", "val", "test")] == [2, 2, 2]
    params = json.loads((out / MANIFEST).read_text())["params"]
    assert params["spacing"] == [8.0, 8.0, 12.0] and params["split"] == [0.5, 0.25, 0.25]
    rc = main(["--input-uri", str(out), "--output-uri", str(tmp_path / "y")])
    assert rc == 2 and "expected 'ingest'" in capsys.readouterr().err  # bad input: exit 2
    rc = main(["--input-uri", str(raw), "--output-uri", str(tmp_path / "y"), "--split", "0,0,0"])
    assert rc == 2 and "split: expected 3 non-negative fractions" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        main(["--input-uri", "a", "--output-uri", "b", "--spacing", "3,3"])
    assert main.__module__ == "components.preprocess"


@pytest.mark.parametrize("mode", ["rigid", "none"])
def test_fields_of_view_that_do_not_overlap_are_named(tmp_path: Path, mode: str) -> None:
    """No raw ITK exception: the error names the subject, both files and what was expected."""
    shape, affine = (24, 24, 12), np.diag([4.0, 4.0, 6.0, 1.0])
    grid = np.indices(shape).sum(0).astype(np.float32)
    ct_file, mr_file = tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(grid * 10.0 - 1000.0, affine), ct_file)
    far = affine.copy()
    far[:3, 3] = [500.0, 0.0, 0.0]  # 500 mm to the left of a 96 mm wide CT
    nib.save(nib.Nifti1Image(grid, far), mr_file)
    with pytest.raises(StepInputError) as err:
        preprocess_subject("far_001", {"mr": mr_file, "ct": ct_file}, tmp_path / "out",
                           spacing=None, register=mode)
    msg = str(err.value)
    assert msg.startswith(f"far_001: cannot register MR file {mr_file} to CT file {ct_file}")
    assert "expected MR and CT volumes with overlapping fields of view" in msg
    assert "CT [0.0, 92.0] x [0.0, 92.0] x [0.0, 66.0] mm" in msg
    assert "MR [500.0, 592.0] x [0.0, 92.0] x [0.0, 66.0] mm" in msg
    assert not isinstance(err.value.__cause__, RuntimeError)  # the ITK error is wrapped once
    assert isinstance(err.value.__cause__.__cause__, RuntimeError)
    assert not (tmp_path / "out").exists()


def test_register_docstring_examples_run() -> None:
    import doctest

    import gan_core.data.register as register

    result = doctest.testmod(register, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- parallel on a Ray cluster


def test_ray_tasks_on_two_nodes_give_the_same_output(raw: Path, tmp_path: Path,
                                                     shared_cluster: SharedCluster) -> None:
    """Subjects as Ray tasks on a real 2-node loopback cluster (the session's): same manifest
    records, same failure reasons, byte-identical NIfTI files and shards as the in-process run."""
    c = shared_cluster.cluster

    src = tmp_path / "raw"
    shutil.copytree(raw, src)
    mr = src / "subjects/phantom_001/mr.nii.gz"
    mr.write_bytes(mr.read_bytes()[:200])  # a bad subject: reported the same way
    kw = dict(spacing=(8.0, 8.0, 12.0), register="rigid", seed=0)
    seq = run_preprocess(str(src), str(tmp_path / "seq"), **kw)
    with c.activated():
        c.heal()
        par = run_preprocess(str(src), str(tmp_path / "par"), ray_address=c.address, **kw)
    assert par["failed"] == seq["failed"] and [f["id"] for f in par["failed"]] == ["phantom_001"]
    for m in (seq, par):  # wall-clock seconds are the one field allowed to differ
        for rec in m["subjects"]:
            assert rec["registration"].pop("seconds") >= 0
    assert par["subjects"] == seq["subjects"] and par["splits"] == seq["splits"]
    assert par["outputs"] == seq["outputs"]  # shard checksums included
    for rec in par["subjects"]:
        for rel in rec["files"].values():
            assert (tmp_path / "par" / rel).read_bytes() == (tmp_path / "seq" / rel).read_bytes()
    # a Jobs API URL runs the step as a Ray job (tests/test_multinode.py); as a driver: refused
    with pytest.raises(StepInputError, match="ray_address 'http://h:8265' is a Jobs API URL"):
        run_preprocess(str(src), str(tmp_path / "x"), ray_address="http://h:8265", launcher="local")


def test_unpaired_training_set_from_disjoint_halves(raw: Path, rigid: tuple[Path, dict],
                                                    tmp_path: Path) -> None:
    """--unpaired packs the training subjects as cross subjects (MR of one half, CT of the
    other), writes the CT half's tissue statistics, and leaves the paired splits as they are;
    the train/tune steps' training_data picks that set and fills fw.segment_stats from it."""
    from components.step import Manifest, training_data
    from gan_core.losses import TissueStats
    from gan_core.presets import preset

    paired_out, paired = rigid
    out = tmp_path / "unpaired"
    m = run_preprocess(str(raw), str(out), spacing=None, register="none", seed=0, unpaired=True)
    assert m["splits"] == paired["splits"] and m["params"]["unpaired"] is True
    u = m["outputs"]["unpaired"]
    mr, ct = u["mr_subjects"], u["ct_subjects"]
    assert mr and ct and not set(mr) & set(ct) and sorted(mr + ct) == sorted(m["splits"]["train"])
    info = m["outputs"]["shards"]["train_unpaired"]
    cross = Shards(out / info["path"])
    train = Shards(out / m["outputs"]["shards"]["train"]["path"])
    rows = {s["id"]: s for s in train.subjects}
    assert [s["id"].split("+")[0] for s in cross.subjects] == mr
    for s in cross.subjects:
        m_id, c_id = s["id"].split("+")
        assert c_id in ct
        a, b = s["offset"], s["offset"] + s["depth"]
        ra, rc = rows[m_id], rows[c_id]
        # the MR (and its labels) of an MR-domain subject, the CT of a CT-domain subject
        assert np.array_equal(cross.arrays["mr"][a:b], train.arrays["mr"][ra["offset"]:ra["offset"] + ra["depth"]])
        assert np.array_equal(cross.arrays["ct"][a:b], train.arrays["ct"][rc["offset"]:rc["offset"] + rc["depth"]])
        assert not np.array_equal(cross.arrays["ct"][a:b],
                                  train.arrays["ct"][ra["offset"]:ra["offset"] + ra["depth"]])
    for f, digest in info["sha256"].items():
        assert storage.sha256_file(out / info["path"] / f) == digest
    stats_text = (out / u["ct_tissue_stats"]).read_text()
    assert json.loads(stats_text)["subjects"] == ct and len(TissueStats.parse(stats_text).labels) > 3

    cfg = preset("unpaired", "cyclegan")
    assert cfg.loss.tissue_value > 0 and not cfg.fw.segment_stats
    shards, filled = training_data(Manifest(str(out), "preprocess", m, ""), cfg, unpaired=True)
    assert shards["train"] == f"{out}/{info['path']}" and filled.fw.segment_stats == stats_text
    # the paired output has neither the unpaired set nor the statistics: both named
    prep = Manifest(str(paired_out), "preprocess", paired, "")
    with pytest.raises(StepInputError, match="train_unpaired.*--unpaired"):
        training_data(prep, preset("structure", "cyclegan"), unpaired=True)
    with pytest.raises(StepInputError, match="ct_tissue_stats.*--unpaired"):
        training_data(prep, cfg)
    assert training_data(prep, preset("demo", "pix2pix"))[0]["train"].endswith("shards/train")
    with pytest.raises(StepInputError, match="'pix2pix' trains on MR/CT pairs"):
        training_data(Manifest(str(out), "preprocess", m, ""), preset("demo", "pix2pix"),
                      unpaired=True)
