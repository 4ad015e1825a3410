"""NIfTI I/O: round trips, deterministic bytes, clear errors on bad files, grid checks."""

from __future__ import annotations

import gzip
import hashlib

import nibabel as nib
import numpy as np
import pytest

from gan_core.data.nifti import NiftiError, Volume, check_same_grid, load_volume, save_volume


def _affine(spacing=(1.0, 1.2, 2.5), origin=(-10.0, 5.0, 3.0)) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return aff


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_keeps_data_affine_spacing(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(6, 5, 4)).astype(np.float32)
    aff = _affine()
    p = save_volume(tmp_path / "mr.nii.gz", arr, affine=aff)
    vol = load_volume(p)
    assert vol.array.dtype == np.float32 and vol.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)
    assert vol.spacing == pytest.approx((1.0, 1.2, 2.5))
    assert vol.path == p
    assert int(vol.header["qform_code"]) > 0 and int(vol.header["sform_code"]) > 0


def test_like_keeps_header_and_int16_ct(tmp_path):
    hu = np.array([-1000.4, 0.6, 1500.0, 40.2] * 6, dtype=np.float32).reshape(2, 3, 4)
    hdr = nib.Nifti1Header()
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = b"template"
    img = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), _affine(), hdr)
    img.header.set_qform(_affine(), code=1)
    img.header.set_sform(_affine(), code=4)
    nib.save(img, tmp_path / "ref.nii")
    ref = load_volume(tmp_path / "ref.nii")

    p = save_volume(tmp_path / "ct.nii.gz", hu, like=ref, dtype=np.int16)
    raw = nib.load(p)
    assert raw.get_data_dtype() == np.int16
    assert int(raw.header["sform_code"]) == 4 and int(raw.header["qform_code"]) == 1
    assert raw.header["descrip"].tobytes().startswith(b"template")
    out = load_volume(p)
    np.testing.assert_array_equal(out.array, np.rint(hu))
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
    assert out.spacing == pytest.approx(ref.spacing)


def test_masks_bool_to_uint8_and_int_range_checked(tmp_path):
    p = save_volume(tmp_path / "mask.nii.gz", np.ones((3, 3, 3), bool))
    assert nib.load(p).get_data_dtype() == np.uint8
    with pytest.raises(NiftiError, match=r"outside the type's range"):
        save_volume(tmp_path / "bad.nii.gz", np.full((2, 2, 2), 300.0), dtype=np.uint8)
    assert not (tmp_path / "bad.nii.gz").exists()
    with pytest.raises(NiftiError, match=r"\.nii or \.nii\.gz"):
        save_volume(tmp_path / "x.img", np.zeros((2, 2, 2)))


def test_same_input_same_bytes(tmp_path):
    arr = np.random.default_rng(1).normal(size=(8, 8, 3)).astype(np.float32)
    a = save_volume(tmp_path / "a" / "x.nii.gz", arr, affine=_affine())
    b = save_volume(tmp_path / "b" / "x.nii.gz", arr, affine=_affine())
    assert a.read_bytes() == b.read_bytes()
    # gzip header mtime is zero, so the bytes do not depend on when they were written
    assert a.read_bytes()[4:8] == b"\x00\x00\x00\x00"
    assert _sha(a) != _sha(save_volume(tmp_path / "c.nii.gz", arr + 1, affine=_affine()))
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_file(tmp_path):
    with pytest.raises(NiftiError, match=r"CT file .*nope\.nii\.gz does not exist"):
        load_volume(tmp_path / "nope.nii.gz", name="CT")


def test_garbage_file(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(NiftiError, match=r"junk\.nii\.gz"):
        load_volume(p)
    q = tmp_path / "junk.nii"
    q.write_bytes(b"\x00" * 400)
    with pytest.raises(NiftiError, match=r"junk\.nii"):
        load_volume(q)


def test_truncated_gz(tmp_path):
    arr = np.random.default_rng(2).normal(size=(20, 20, 10)).astype(np.float32)
    p = save_volume(tmp_path / "mr.nii.gz", arr, affine=_affine())
    data = p.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(NiftiError, match=r"cut\.nii\.gz is truncated"):
        load_volume(cut, name="MR")


def test_truncated_uncompressed(tmp_path):
    arr = np.zeros((10, 10, 10), np.float32)
    p = save_volume(tmp_path / "mr.nii", arr, affine=_affine())
    cut = tmp_path / "cut.nii"
    cut.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(NiftiError, match=r"cut\.nii"):
        load_volume(cut)


def test_2d_and_4d(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(NiftiError, match=r"shape \(5, 6\).*expected a 3D"):
        load_volume(tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 1), np.float32), np.eye(4)), tmp_path / "one.nii.gz")
    assert load_volume(tmp_path / "one.nii.gz").array.shape == (4, 4, 3)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 2), np.float32), np.eye(4)), tmp_path / "two.nii.gz")
    with pytest.raises(NiftiError, match=r"shape \(4, 4, 3, 2\)"):
        load_volume(tmp_path / "two.nii.gz")


def test_nan_voxels_reported(tmp_path):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(NiftiError, match=r"nan\.nii\.gz contains 4 NaN/Inf"):
        load_volume(tmp_path / "nan.nii.gz")
    with pytest.raises(NiftiError, match="NaN/Inf"):
        save_volume(tmp_path / "nan16.nii.gz", arr, dtype=np.int16)


def test_not_gzip_but_named_gz(tmp_path):
    # a valid .nii payload whose gzip stream is corrupted in the middle
    arr = np.random.default_rng(3).normal(size=(16, 16, 8)).astype(np.float32)
    p = save_volume(tmp_path / "x.nii.gz", arr)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
    p.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match=r"x\.nii\.gz"):
        load_volume(p)
    # sanity: the original bytes were a real gzip of a NIfTI
    assert gzip.decompress(save_volume(tmp_path / "y.nii.gz", arr).read_bytes())[:4] == \
        (348).to_bytes(4, "little")


def test_check_same_grid(tmp_path):
    a = load_volume(save_volume(tmp_path / "mr.nii.gz", np.zeros((4, 4, 2)), affine=_affine()))
    b = load_volume(save_volume(tmp_path / "ct.nii.gz", np.zeros((4, 4, 2)), affine=_affine()))
    check_same_grid(a, b)
    c = load_volume(save_volume(tmp_path / "ct2.nii.gz", np.zeros((4, 4, 3)), affine=_affine()))
    with pytest.raises(NiftiError, match=r"MR .*mr\.nii\.gz.*\(4, 4, 2\).*CT .*ct2\.nii\.gz.*\(4, 4, 3\)"):
        check_same_grid(a, c)
    d = load_volume(save_volume(tmp_path / "ct3.nii.gz", np.zeros((4, 4, 2)),
                                affine=_affine(spacing=(1.0, 1.2, 3.0))))
    with pytest.raises(NiftiError, match=r"affines differ.*spacing \(1, 1\.2, 3\)"):
        check_same_grid(a, d)
    with pytest.raises(NiftiError, match=r"^T1 and T2"):
        check_same_grid(a, d, names=("T1", "T2"))


def test_volume_spacing_from_affine_without_header():
    v = Volume(np.zeros((2, 2, 2), np.float32), np.diag([0.5, 0.7, 3.0, 1.0]))
    assert v.spacing == pytest.approx((0.5, 0.7, 3.0))
