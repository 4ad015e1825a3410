"""The digital head phantom: determinism, tissue values, the MR air/bone ambiguity, lesions,
geometry, misalignment, cohort layout and argument validation."""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from gan_core.data.nifti import check_same_grid, load_volume
from gan_core.data.phantom import (
    COHORT_FILES, TISSUE_HU_RANGE, TISSUES, add_phantom_args, generate_subject, run_phantom_cli,
    subject_seed, write_cohort,
)

TINY = dict(shape=(40, 40, 16), spacing=(6.0, 6.0, 9.0))   # FOV 240 x 240 x 144 mm
SMALL = dict(shape=(64, 64, 24), spacing=(3.0, 3.0, 6.0))  # FOV 192 x 192 x 144 mm
PARENCHYMA = (TISSUES["grey_matter"], TISSUES["white_matter"])


def _hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _median(arr, labels, name):
    sel = labels == TISSUES[name]
    assert sel.sum() > 5, f"too few {name} voxels"
    return float(np.median(arr[sel]))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_cohort(tmp_path / "a", subjects=2, seed=7, lesion_prevalence=0.5, **TINY)
    write_cohort(tmp_path / "b", subjects=2, seed=7, lesion_prevalence=0.5, **TINY)
    write_cohort(tmp_path / "c", subjects=2, seed=8, lesion_prevalence=0.5, **TINY)
    ha, hb, hc = (_hashes(tmp_path / k) for k in "abc")
    assert [p.name for p in a] == ["phantom_000", "phantom_001"]
    expected = {f"phantom_00{i}/{k}.nii.gz" for i in range(2) for k in COHORT_FILES} | {"cohort.json"}
    assert set(ha) == expected
    assert ha == hb
    for key in ("phantom_000/mr.nii.gz", "phantom_000/ct.nii.gz", "phantom_001/ct.nii.gz"):
        assert ha[key] != hc[key]
    assert ha["phantom_000/ct.nii.gz"] != ha["phantom_001/ct.nii.gz"]


def test_subject_independent_of_cohort_size_and_rewrite_is_clean(tmp_path):
    write_cohort(tmp_path / "two", subjects=2, seed=3, **TINY)
    write_cohort(tmp_path / "one", subjects=1, seed=3, **TINY)
    two, one = _hashes(tmp_path / "two"), _hashes(tmp_path / "one")
    for k in COHORT_FILES:
        assert one[f"phantom_000/{k}.nii.gz"] == two[f"phantom_000/{k}.nii.gz"]
    # writing again into an existing cohort replaces subjects atomically, leaves no temp dirs
    write_cohort(tmp_path / "two", subjects=2, seed=3, **TINY)
    assert _hashes(tmp_path / "two") == two
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]
    assert subject_seed(3, 0) != subject_seed(3, 1)


def test_cohort_files_dtypes_grid_and_json(tmp_path):
    dirs = write_cohort(tmp_path, subjects=1, seed=0, lesion_prevalence=1.0, **TINY)
    d = dirs[0]
    for key, dtype in COHORT_FILES.items():
        assert nib.load(d / f"{key}.nii.gz").get_data_dtype() == np.dtype(dtype), key
    mr, ct = load_volume(d / "mr.nii.gz"), load_volume(d / "ct.nii.gz")
    check_same_grid(mr, ct)
    mask = load_volume(d / "mask.nii.gz").array
    labels = load_volume(d / "labels.nii.gz").array
    np.testing.assert_array_equal(mask, (labels != 0).astype(np.float32))
    assert np.array_equal(ndimage.binary_fill_holes(mask > 0), mask > 0), "body mask has holes"
    assert set(np.unique(labels).astype(int)) <= set(TISSUES.values())
    assert -1024 <= ct.array.min() and ct.array.max() <= 3071

    text = (tmp_path / "cohort.json").read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    assert doc["parameters"] == {"seed": 0, "subjects": 1, "shape": [40, 40, 16],
                                 "spacing_mm": [6.0, 6.0, 9.0], "lesion_prevalence": 1.0,
                                 "misalign_mm": 0.0}
    rec = doc["subjects"][0]
    assert rec["id"] == "phantom_000" and rec["meta"]["has_lesion"] is True
    for key, f in rec["files"].items():
        assert hashlib.sha256((tmp_path / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert "time" not in text.lower() and "date" not in text.lower()
    # the subject can be regenerated from its recorded seed
    again = generate_subject(rec["subject_seed"], lesion_prevalence=1.0, **TINY)
    np.testing.assert_array_equal(again.ct, ct.array)


@pytest.mark.parametrize("seed", [0, 1])
def test_tissue_hu_within_ranges(seed):
    s = generate_subject(seed, **SMALL)
    ct, lab = s.ct, s.labels
    # PV blur and noise move medians a little beyond the drawn ranges: allow a margin
    margins = {"cortical_bone": 300.0, "marrow": 60.0, "fat": 25.0}
    for name, (lo, hi) in TISSUE_HU_RANGE.items():
        m = margins.get(name, 12.0)
        med = _median(ct, lab, name)
        assert lo - m <= med <= hi + m, f"{name}: median {med} HU outside [{lo - m}, {hi + m}]"
    assert _median(ct, lab, "air") == pytest.approx(-1000, abs=5)
    assert _median(ct, lab, "sinus_air") < -900
    assert _median(ct, lab, "grey_matter") > _median(ct, lab, "white_matter")
    # the recorded per-subject values are inside the stated tables
    for name, v in s.meta["tissue_hu"].items():
        lo, hi = TISSUE_HU_RANGE[name]
        assert lo <= v <= hi


@pytest.mark.parametrize("seed", [0, 5])
def test_mr_air_bone_ambiguity_ct_separates(seed):
    s = generate_subject(seed, **SMALL)
    mr = {n: _median(s.mr, s.labels, n) for n in TISSUES}
    ct = {n: _median(s.ct, s.labels, n) for n in TISSUES}
    wm = mr["white_matter"]
    assert mr["fat"] > mr["grey_matter"] and wm > mr["grey_matter"] > mr["csf"]
    for dark in ("air", "cortical_bone", "sinus_air"):
        assert mr[dark] < 0.1 * wm, dark
    assert abs(mr["cortical_bone"] - mr["air"]) < 0.05 * wm
    assert abs(mr["cortical_bone"] - mr["sinus_air"]) < 0.05 * wm
    assert mr["cortical_bone"] < mr["marrow"] < wm  # marrow intermediate
    assert ct["cortical_bone"] - ct["air"] > 1500
    assert ct["cortical_bone"] - ct["sinus_air"] > 1500


def test_no_lesions_at_prevalence_zero():
    for seed in range(6):
        s = generate_subject(seed, lesion_prevalence=0.0, **TINY)
        assert not s.meta["has_lesion"] and s.meta["lesions"] == []
        assert s.lesion.dtype == np.uint8 and not s.lesion.any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lesions_at_prevalence_one_show_ct_contrast(seed):
    with_l = generate_subject(seed, lesion_prevalence=1.0, **SMALL)
    without = generate_subject(seed, lesion_prevalence=0.0, **SMALL)
    assert with_l.meta["has_lesion"] and 1 <= len(with_l.meta["lesions"]) <= 2
    les = with_l.lesion > 0
    assert les.any()
    assert np.isin(with_l.labels[les], PARENCHYMA).all(), "lesions must lie in brain parenchyma"
    np.testing.assert_array_equal(with_l.labels, without.labels)
    # identical noise streams: the CT differs only around the lesions
    diff = with_l.ct - without.ct
    near = ndimage.binary_dilation(les, iterations=2)
    assert not diff[~near].any()
    comps, n = ndimage.label(les)
    assert n >= len(with_l.meta["lesions"])  # a sulcus can split a lesion
    for info in with_l.meta["lesions"]:
        comp = comps == comps[tuple(info["centre_voxel"])]
        delta = info["ct_delta_hu"]
        assert (30 <= delta <= 60) if info["kind"] == "haemorrhage" else (-25 <= delta <= -15)
        mean = float(diff[comp].mean())
        assert np.sign(mean) == np.sign(delta) and abs(mean) > 0.4 * abs(delta), (info, mean)
        # and it is visible against surrounding parenchyma in the final CT (noise included)
        ring = ndimage.binary_dilation(comp, iterations=4) & ~near
        ring &= np.isin(with_l.labels, PARENCHYMA)
        assert ring.sum() >= 10
        if info["kind"] == "haemorrhage":
            assert with_l.ct[comp].mean() > with_l.ct[ring].mean() + 0.5 * delta
        t1_change = info["t1_relative_change"]
        assert np.sign(with_l.mr[comp].mean() - without.mr[comp].mean()) == np.sign(t1_change)


def test_anisotropic_spacing_in_affine_and_header(tmp_path):
    spacing = (2.0, 2.5, 7.0)
    s = generate_subject(0, shape=(48, 40, 16), spacing=spacing)
    np.testing.assert_allclose(np.diag(s.affine)[:3], spacing)
    centre = s.affine @ np.array([47 / 2, 39 / 2, 15 / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # volume centred on the origin
    d = write_cohort(tmp_path, subjects=1, shape=(48, 40, 16), spacing=spacing)[0]
    img = nib.load(d / "ct.nii.gz")
    assert img.header.get_zooms() == pytest.approx(spacing)
    np.testing.assert_allclose(img.affine, s.affine, atol=1e-5)
    assert load_volume(d / "mr.nii.gz").spacing == pytest.approx(spacing)


def test_anatomy_in_mm_independent_of_spacing():
    coarse = generate_subject(4, shape=(48, 48, 16), spacing=(4.0, 4.0, 9.0))
    fine = generate_subject(4, **SMALL)  # same 192 x 192 x 144 mm field of view
    for name in ("white_matter", "csf", "fat"):
        vols = [float((s.labels == TISSUES[name]).sum()) * np.prod(s.spacing) for s in (coarse, fine)]
        assert vols[0] == pytest.approx(vols[1], rel=0.12), name
    head = [float(s.mask.sum()) * np.prod(s.spacing) for s in (coarse, fine)]
    assert head[0] == pytest.approx(head[1], rel=0.03)


def test_misalignment_moves_mr_only_and_is_undoable():
    a = generate_subject(2, **TINY)
    b = generate_subject(2, misalign_mm=8.0, **TINY)
    for key in ("ct", "labels", "mask", "lesion"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.mr, b.mr)
    mis = b.meta["misalignment"]
    assert 4.0 - 1e-3 <= np.linalg.norm(mis["translation_mm"]) <= 8.0 + 1e-3
    assert max(abs(v) for v in mis["rotation_deg"]) <= 3.0
    assert a.meta["misalignment"]["matrix"] == np.eye(4).tolist()
    # undo it with the recorded matrix: the MR lines up with the aligned MR again
    T = np.linalg.inv(a.affine) @ np.array(mis["matrix"]) @ a.affine
    back = ndimage.affine_transform(b.mr, T[:3, :3], offset=T[:3, 3], order=1)
    inner = np.zeros(a.mr.shape, bool)
    inner[4:-4, 4:-4, 2:-2] = True

    def corr(x, y):
        return float(np.corrcoef(x[inner], y[inner])[0, 1])

    assert corr(a.mr, back) > corr(a.mr, b.mr) + 0.1
    c = generate_subject(2, misalign_mm=8.0, **TINY)
    np.testing.assert_array_equal(b.mr, c.mr)


def test_default_size_is_fast():
    t0 = time.process_time()
    s = generate_subject(11)
    cpu = time.process_time() - t0
    assert s.ct.shape == (128, 128, 48) and s.mr.dtype == np.float32
    assert cpu < 2.0, f"128x128x48 subject took {cpu:.2f} s of CPU"


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(8, 40, 16)), "shape"),
    (dict(shape=(40, 40)), "shape"),
    (dict(shape=(40.0, 40, 16)), "shape"),
    (dict(spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(spacing=(1.0, float("nan"), 1.0)), "spacing"),
    (dict(lesion_prevalence=1.5), "lesion_prevalence"),
    (dict(lesion_prevalence=-0.1), "lesion_prevalence"),
    (dict(misalign_mm=-1.0), "misalign_mm"),
])
def test_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_subject(0, **kwargs)


def test_cohort_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="subjects"):
        write_cohort(tmp_path, subjects=0, **TINY)
    with pytest.raises(ValueError, match="seed"):
        write_cohort(tmp_path, subjects=1, seed=-1, **TINY)
    with pytest.raises(ValueError, match="subject_seed"):
        generate_subject(-3, **TINY)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        write_cohort(tmp_path / "file", subjects=1, **TINY)


def test_cli_helpers(tmp_path, capsys):
    parser = add_phantom_args(argparse.ArgumentParser())
    args = parser.parse_args(["--out", str(tmp_path / "c"), "--seed", "2", "--subjects", "1",
                              "--shape", "40,40,16", "--spacing", "6,6,9",
                              "--lesion-prevalence", "1", "--misalign-mm", "2.5"])
    assert args.shape == (40, 40, 16) and args.spacing == (6.0, 6.0, 9.0)
    dirs = run_phantom_cli(args)
    assert [p.name for p in dirs] == ["phantom_000"]
    doc = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert doc["parameters"]["misalign_mm"] == 2.5 and doc["parameters"]["seed"] == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--shape", "40,40"])
    assert "--shape: expected three comma-separated ints" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--spacing", "a,b,c"])
