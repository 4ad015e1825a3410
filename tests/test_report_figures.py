"""The evaluation figures a radiologist reads: HU window and colour bars, the slice's MAE over
the scored voxels only, the lesion outlined, unscored voxels (outside the body or the MR's field
of view) drawn flat instead of as error."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from gan_core.eval.report import ERROR_RANGE_HU, HU_WINDOW, hu_panels, save_panels

NOT_SCORED_RGB = np.array([0x2b, 0x4a, 0x6f]) / 255


def _slice() -> tuple[np.ndarray, ...]:
    ct = np.full((32, 32), 40.0)
    scored = np.ones((32, 32), bool)
    scored[20:] = False  # e.g. outside the MR's field of view
    pred = ct + 50.0
    pred[20:] = 2000.0  # wildly wrong where nothing is scored
    lesion = np.zeros((32, 32), bool)
    lesion[5:9, 5:9] = True
    return ct, pred, scored, lesion


def test_the_slice_mae_counts_only_scored_voxels_and_panels_carry_window_bars_outline() -> None:
    ct, pred, scored, lesion = _slice()
    panels = hu_panels(np.zeros_like(ct), ct, {"net": pred}, scored, lesion, z=7)
    titles = [t for t, _, _ in panels]
    assert titles[0].startswith("MR z=7") and "W 2500 / L 250" in titles[1]
    assert titles[3] == "net |err|  MAE 50 HU"  # the 2000 HU voxels outside are not counted
    ct_kw, sct_kw, err_kw = panels[1][2], panels[2][2], panels[3][2]
    assert (ct_kw["vmin"], ct_kw["vmax"]) == HU_WINDOW and ct_kw["colorbar"] == "HU"
    assert (err_kw["vmin"], err_kw["vmax"]) == ERROR_RANGE_HU and err_kw["colorbar"] == "|error| HU"
    np.testing.assert_array_equal(ct_kw["outline"], lesion)
    for kw in (sct_kw, err_kw):
        np.testing.assert_array_equal(kw["hide"], ~scored)
    np.testing.assert_array_equal(panels[0][2]["outline"], scored)


def _has_colour(png: Path, rgb: np.ndarray) -> bool:
    img = mpimg.imread(png)[..., :3]
    return bool((np.abs(img - rgb).max(-1) < 0.02).any())


def test_unscored_voxels_are_drawn_flat_not_as_error(tmp_path: Path) -> None:
    ct, pred, scored, lesion = _slice()
    shown = save_panels(tmp_path / "a.png", [hu_panels(ct, ct, {"net": pred}, scored, lesion)])
    everything = save_panels(tmp_path / "b.png", [hu_panels(ct, ct, {"net": pred},
                                                            np.ones_like(scored), lesion)])
    assert _has_colour(shown, NOT_SCORED_RGB)
    assert not _has_colour(everything, NOT_SCORED_RGB)
    red = mpimg.imread(shown)[..., :3]
    assert ((red[..., 0] - red[..., 1:].max(-1)) > 0.4).any()  # the red lesion outline
