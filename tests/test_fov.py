"""Voxels outside the registered MR's field of view: no MR data there, so the preprocess step
removes them from the body mask (not trained on, not scored) and counts them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from components.subject_prep import preprocess_subject
from gan_core.data.nifti import load_volume, save_volume
from gan_core.data.register import field_of_view, resample, sitk_image, to_xyz
from gan_core.eval.metrics import mae

SPACING = (4.0, 4.0, 6.0)


def _volumes(tmp_path: Path, mr_columns: int) -> dict[str, Path]:
    """A 24 x 24 x 6 CT (soft tissue to bone) whose body fills the grid, and an MR on the same grid but only its first
    ``mr_columns`` columns along X (the MR's field of view ends there)."""
    affine = np.diag([*SPACING, 1.0])
    rng = np.random.default_rng(0)
    ct = rng.integers(-100, 400, (24, 24, 6)).astype(float)
    mr = rng.uniform(100, 200, (mr_columns, 24, 6))
    return {"ct": save_volume(tmp_path / "ct.nii.gz", ct, affine=affine, dtype=np.int16),
            "mr": save_volume(tmp_path / "mr.nii.gz", mr, affine=affine, dtype=np.float32),
            "mask": save_volume(tmp_path / "mask.nii.gz", np.ones_like(ct), affine=affine,
                                dtype=np.uint8)}


def test_voxels_outside_the_mr_field_of_view_are_excluded_and_counted(tmp_path: Path) -> None:
    files = _volumes(tmp_path / "in", mr_columns=16)
    rec = preprocess_subject("s0", files, tmp_path / "out", spacing=None, register="none")
    mask = load_volume(rec["written"]["mask"]).array > 0
    mr = load_volume(rec["written"]["mr"]).array
    assert rec["outside_fov_voxels"] == 8 * 24 * 6  # columns 16..23, every row and slice
    assert mask[:16].all() and not mask[16:].any()
    assert (mr[16:] == 0).all() and (mr[:16] > 0).all()  # the resample default, where no MR is
    # the metrics only see the mask: an arbitrary prediction out of the field of view costs nothing
    ct = load_volume(rec["written"]["ct"]).array
    pred = ct.copy()
    pred[16:] = 3000.0
    assert mae(ct, pred, mask) == 0.0
    assert mae(ct, pred, np.ones_like(mask)) > 0  # ... which the full body would count


def test_an_mr_covering_the_ct_leaves_nothing_out(tmp_path: Path) -> None:
    files = _volumes(tmp_path / "in", mr_columns=24)
    rec = preprocess_subject("s0", files, tmp_path / "out", spacing=None, register="none")
    assert rec["outside_fov_voxels"] == 0
    assert (load_volume(rec["written"]["mask"]).array > 0).all()


def test_field_of_view_matches_what_resample_fills_under_a_rotation() -> None:
    """A rotated MR leaves corner wedges of the grid empty: field_of_view is False exactly where
    linear resampling wrote its default."""
    rng = np.random.default_rng(1)
    mr = sitk_image(rng.uniform(1, 2, (20, 20, 4)), np.diag([3.0, 3.0, 5.0, 1.0]))
    rot = sitk.Euler3DTransform()
    rot.SetCenter(mr.TransformContinuousIndexToPhysicalPoint([9.5, 9.5, 1.5]))
    rot.SetRotation(0.0, 0.0, np.deg2rad(30))
    fov = field_of_view(mr, mr, rot)
    filled = to_xyz(resample(mr, mr, transform=rot, default=0.0))
    assert 0 < (~fov).sum() < fov.size // 2  # the wedges
    np.testing.assert_array_equal(fov, filled > 0)
