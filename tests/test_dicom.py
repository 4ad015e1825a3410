"""DICOM series -> volume/NIfTI on real files built from pydicom's bundled CT and MR images."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from gan_core.data.dicom import DicomError, group_series, series_to_volume, write_series_nifti
from tests.nbia_server import Series, encode, make_series, non_image_copy


def _write(series: Series, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in series.files.items():  # shuffled order
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def _lps(ds: pydicom.Dataset, row: int, col: int) -> np.ndarray:
    """World (LPS) position of pixel (row, col), straight from the DICOM standard (C.7.6.2.1.1)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp + iop[:3] * dc * col + iop[3:] * dr * row


def test_ct_hu_rescale_sorting_and_shape(tmp_path: Path) -> None:
    series = make_series("CT", n_slices=5, slope=0.5, intercept=-1000, seed=3)
    paths = _write(series, tmp_path / "ct")
    vol, _, meta = series_to_volume(paths)
    assert vol.dtype == np.float32
    assert vol.shape == (128, 128, 5)
    assert meta["n_slices"] == 5 and meta["units"] == "HU" and meta["modality"] == "CT"
    # independent order: re-read the shuffled files and sort by z (axial series)
    reread = sorted((pydicom.dcmread(p) for p in paths),
                    key=lambda d: float(d.ImagePositionPatient[2]))
    assert [int(d.InstanceNumber) for d in reread] == [5, 4, 3, 2, 1]  # not the sort key
    for k, ds in enumerate(reread):
        expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) \
            + float(ds.RescaleIntercept)
        np.testing.assert_allclose(vol[:, :, k], expected.T, atol=1e-4)
    # slices differ (pixel offset 3 per slice before rescale): order really comes from positions
    np.testing.assert_allclose(vol[:, :, 4] - vol[:, :, 0], 4 * 3 * 0.5)


def test_default_rescale_and_file_order_irrelevant(tmp_path: Path) -> None:
    series = make_series("MR", n_slices=3, seed=1)
    assert "RescaleSlope" not in series.datasets[0]
    paths = _write(series, tmp_path / "mr")
    vol, affine, meta = series_to_volume(paths)
    vol2, affine2, _ = series_to_volume(list(reversed(paths)))
    np.testing.assert_array_equal(vol, vol2)
    np.testing.assert_array_equal(affine, affine2)
    np.testing.assert_array_equal(vol[:, :, 0], series.datasets[0].pixel_array.T.astype(np.float32))
    assert meta["rescale"] == [[1.0, 0.0]] and meta["units"] == "scanner"


@pytest.mark.parametrize("orientation", [
    [1, 0, 0, 0, 1, 0],                                      # axial
    [1, 0, 0, 0, 0, -1],                                     # coronal
    [0.8660254, 0.5, 0, -0.5, 0.8660254, 0],                 # oblique (30 deg in-plane)
])
def test_affine_maps_voxels_to_ras(tmp_path: Path, orientation: list[float]) -> None:
    series = make_series("MR", n_slices=4, gap=1.7, orientation=orientation,
                         pixel_spacing=[0.5, 0.8])  # row spacing != column spacing
    vol, affine, meta = series_to_volume(_write(series, tmp_path / "s"))
    assert meta["spacing"] == pytest.approx([0.8, 0.5, 1.7])
    for k, ds in enumerate(series.datasets):
        for row, col in [(0, 0), (0, 63), (40, 7), (63, 63)]:
            lps = _lps(ds, row, col)
            ras = affine @ np.array([col, row, k, 1.0])
            np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-3)
            assert vol[col, row, k] == ds.pixel_array[row, col]
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.8, 0.5, 1.7], atol=1e-4)


def test_write_nifti_roundtrip(tmp_path: Path) -> None:
    series = make_series("CT", n_slices=3)
    out = tmp_path / "nii" / "ct.nii.gz"
    meta = write_series_nifti(_write(series, tmp_path / "ct"), out)
    assert meta["path"] == str(out)
    assert [p.name for p in out.parent.iterdir()] == ["ct.nii.gz"]  # no temp left behind
    img = nib.load(out)
    vol, affine, _ = series_to_volume(sorted((tmp_path / "ct").iterdir()))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    with pytest.raises(ValueError, match=r"\.nii"):
        write_series_nifti([], tmp_path / "ct.mha")


def test_single_slice_uses_slice_thickness(tmp_path: Path) -> None:
    series = make_series("CT", n_slices=1, gap=3.0)
    vol, affine, meta = series_to_volume(_write(series, tmp_path / "one"))
    assert vol.shape == (128, 128, 1)
    assert meta["spacing"][2] == pytest.approx(3.0)
    np.testing.assert_allclose(affine[:3, 2], [0, 0, 3.0])


def test_non_image_skipped_and_reported(tmp_path: Path) -> None:
    series = make_series("CT", n_slices=3)
    paths = _write(series, tmp_path / "ct")
    sr = tmp_path / "ct" / "sr.dcm"
    sr.write_bytes(encode(non_image_copy(series.datasets[0])))
    rtss = tmp_path / "ct" / "rtstruct.dcm"
    rtss.write_bytes(encode(non_image_copy(series.datasets[0], "1.2.840.10008.5.1.4.1.1.481.3")))
    text = tmp_path / "ct" / "LICENSE.txt"
    text.write_text("not dicom")
    vol, _, meta = series_to_volume([*paths, sr, rtss, text])
    assert vol.shape[2] == 3
    reasons = {Path(s["file"]).name: s["reason"] for s in meta["skipped"]}
    assert set(reasons) == {"sr.dcm", "rtstruct.dcm", "LICENSE.txt"}
    assert "structured report" in reasons["sr.dcm"]
    assert "RT structure set" in reasons["rtstruct.dcm"]
    assert "not a DICOM file" in reasons["LICENSE.txt"]


def test_only_non_image_is_an_error_naming_file_and_reason(tmp_path: Path) -> None:
    ds = make_series("CT", n_slices=1).datasets[0]
    path = tmp_path / "nopix.dcm"
    other = non_image_copy(ds, sop_class=str(ds.SOPClassUID))  # CT SOP class, PixelData removed
    path.write_bytes(encode(other))
    with pytest.raises(DicomError, match=r"nopix\.dcm: no PixelData"):
        series_to_volume([path])


def test_inconsistent_orientation_is_an_error(tmp_path: Path) -> None:
    series = make_series("CT", n_slices=3)
    paths = _write(series, tmp_path / "ct")
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[1])
    with pytest.raises(DicomError, match=rf"{paths[1].name}: ImageOrientationPatient=.*differs"):
        series_to_volume(paths)


def test_inconsistent_rows_and_spacing_are_errors(tmp_path: Path) -> None:
    a = make_series("MR", n_slices=2, series_uid="1.2.3.4")
    b = make_series("MR", n_slices=1, series_uid="1.2.3.4", pixel_spacing=[0.4, 0.4], gap=10)
    paths = _write(a, tmp_path / "a")
    (tmp_path / "a" / "x.dcm").write_bytes(next(iter(b.files.values())))
    with pytest.raises(DicomError, match="PixelSpacing"):
        series_to_volume([*paths, tmp_path / "a" / "x.dcm"])


def test_missing_slice_gap_and_duplicate_position(tmp_path: Path) -> None:
    series = make_series("CT", n_slices=4, gap=2.0)
    paths = _write(series, tmp_path / "ct")
    by_pos = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    with pytest.raises(DicomError, match=r"gap 4\.0000 mm.*spacing 2\.0000"):
        series_to_volume([p for p in paths if p != by_pos[2]])
    six = _write(make_series("CT", n_slices=6, gap=2.0), tmp_path / "six")
    six_by_pos = sorted(six, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    with pytest.raises(DicomError, match=rf"gap 4\.0000 mm between .*{six_by_pos[2].name}"):
        series_to_volume([p for p in six if p != six_by_pos[3]])
    dup = tmp_path / "ct" / "dup.dcm"
    ds = pydicom.dcmread(by_pos[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(dup)
    with pytest.raises(DicomError, match="same position"):
        series_to_volume([*paths, dup])


def test_mixed_series_rejected_and_group_series(tmp_path: Path) -> None:
    ct = make_series("CT", n_slices=3)
    mr = make_series("MR", n_slices=2)
    ct_paths = _write(ct, tmp_path / "d" / "ct")
    mr_paths = _write(mr, tmp_path / "d" / "nested" / "mr")
    (tmp_path / "d" / "README").write_text("hello")
    with pytest.raises(DicomError, match="2 series"):
        series_to_volume([*ct_paths, *mr_paths])
    groups = group_series(tmp_path / "d")
    assert groups == {ct.uid: sorted(ct_paths), mr.uid: sorted(mr_paths)}
    with pytest.raises(NotADirectoryError):
        group_series(tmp_path / "missing")
