"""SynthRAD2023-exact metrics and the lesion hallucination audit (gan_core.eval.metrics)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from gan_core.eval.metrics import (DYNAMIC_RANGE, aggregate, learn_border_margin, lesion_audit, mae,
                                   noise_floor_hu, psnr, score, ssim)


def _ball(shape, centre, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius ** 2


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- MAE / PSNR
def test_constant_offset_gives_hand_computed_mae_and_psnr(rng):
    gt = rng.uniform(-500, 500, (9, 9, 9)).astype(np.float32)
    pred = gt + 7.0
    assert mae(gt, pred) == pytest.approx(7.0, abs=1e-4)
    assert psnr(gt, pred) == pytest.approx(10 * math.log10(4024.0 ** 2 / 7.0 ** 2), abs=1e-4)


def test_mask_restricts_and_is_binarised(rng):
    gt = np.zeros((8, 8, 8), np.float32)
    pred = np.full_like(gt, 3000.0)          # huge error everywhere...
    inside = _ball(gt.shape, (4, 4, 4), 2.5)
    pred[inside] = 5.0                       # ...except 5 HU inside the mask
    mask02 = np.where(inside, 2, 0).astype(np.int16)
    mask_neg = np.where(inside, 1, -3)       # negative values are outside too (mask > 0)
    for m in (inside, inside.astype(np.uint8), mask02, mask_neg):
        assert mae(gt, pred, m) == pytest.approx(5.0)
        assert psnr(gt, pred, m) == pytest.approx(20 * math.log10(4024.0 / 5.0))
    # a 0/2 mask must not double-weight anything: the same as the 0/1 mask, bit for bit
    assert ssim(gt, pred, mask02) == ssim(gt, pred, inside.astype(np.float32))
    assert mae(gt, pred) > 2000.0  # without the mask the outside counts


def test_mae_is_not_clipped_but_psnr_is():
    gt = np.full((4, 4), 2000.0)
    pred = np.full((4, 4), 4000.0)           # 1000 HU beyond the range top
    assert mae(gt, pred) == pytest.approx(2000.0)
    assert psnr(gt, pred) == pytest.approx(20 * math.log10(4024.0 / 1000.0))  # pred -> 3000
    low_gt = np.full((4, 4), -3000.0)        # clipped to -1024 for PSNR
    assert mae(low_gt, np.full((4, 4), -1000.0)) == pytest.approx(2000.0)
    assert psnr(low_gt, np.full((4, 4), -1000.0)) == pytest.approx(20 * math.log10(4024.0 / 24.0))


def test_identical_volumes(rng):
    gt = rng.uniform(-1000, 2000, (10, 10, 10))
    mask = _ball(gt.shape, (5, 5, 5), 4)
    assert mae(gt, gt, mask) == 0.0
    assert psnr(gt, gt, mask) == math.inf   # skimage's zero-MSE answer, kept on purpose
    assert ssim(gt, gt, mask) == 1.0
    assert ssim(gt, gt) == 1.0
    # identical after clipping counts as identical for PSNR, not for MAE
    assert psnr(np.full(5, 3500.0), np.full(5, 3100.0)) == math.inf
    assert mae(np.full(5, 3500.0), np.full(5, 3100.0)) == pytest.approx(400.0)


def test_inputs_cast_to_float32_like_synthrad_loader(rng):
    gt = rng.uniform(-1000, 2000, (8, 8, 8))
    pred = gt + rng.normal(0, 30, gt.shape)
    g32, p32 = gt.astype(np.float32), pred.astype(np.float32)
    assert mae(gt, pred) == mae(g32, p32)
    assert psnr(gt, pred) == psnr(g32, p32)
    assert ssim(gt, pred) == ssim(g32, p32)


# ----------------------------------------------------------------------------- SSIM
def _ssim_recipe(gt, pred, mask):
    """The SynthRAD2023 recipe written out independently with numpy + skimage."""
    gt = np.clip(gt.astype(np.float32), -1024, 3000)
    pred = np.clip(pred.astype(np.float32), -1024, 3000)
    if mask is not None:
        gt = np.where(mask > 0, gt, -1024) + 1024
        pred = np.where(mask > 0, pred, -1024) + 1024
    else:
        gt, pred = gt + 1024, pred + 1024
    full, smap = structural_similarity(gt, pred, data_range=4024.0, full=True)
    if mask is None:
        return full
    inner = (mask > 0)[3:-3, 3:-3, 3:-3]
    return smap[3:-3, 3:-3, 3:-3][inner].mean(dtype=np.float64)


def test_ssim_matches_skimage_recipe(rng):
    shape = (12, 13, 14)
    gt = rng.uniform(-1200, 3300, shape)     # some values beyond the range: clipping matters
    pred = gt + rng.normal(0, 150, shape)
    mask = _ball(shape, (6, 6, 7), 5)
    value = ssim(gt, pred, mask)
    assert value == pytest.approx(_ssim_recipe(gt, pred, mask), abs=1e-12)
    assert ssim(gt, pred) == pytest.approx(_ssim_recipe(gt, pred, None), abs=1e-12)
    assert 0.0 < value < 1.0
    # masking changes the answer: the outside is flattened to -1024 and excluded from the mean
    assert value != pytest.approx(ssim(gt, pred), abs=1e-6)


def test_ssim_worse_for_noisier_prediction(rng):
    gt = rng.uniform(-500, 500, (10, 10, 10))
    a = ssim(gt, gt + rng.normal(0, 20, gt.shape))
    b = ssim(gt, gt + rng.normal(0, 300, gt.shape))
    assert 1.0 > a > b


# ----------------------------------------------------------------------------- errors
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        mae(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="psnr.*mask shape"):
        psnr(np.zeros((4, 5)), np.zeros((4, 5)), np.ones((5, 4)))


def test_empty_mask_and_non_finite_and_tiny_ssim():
    z = np.zeros((8, 8, 8))
    for fn in (mae, psnr, ssim):
        with pytest.raises(ValueError, match="mask is empty"):
            fn(z, z, np.zeros_like(z))
    bad = z.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="prediction holds 1 non-finite"):
        mae(z, bad)
    with pytest.raises(ValueError, match=">= 7"):
        ssim(np.zeros((6, 8, 8)), np.zeros((6, 8, 8)))
    edge_only = np.zeros_like(z)
    edge_only[0] = 1                           # entirely inside the 3-voxel crop
    with pytest.raises(ValueError, match="farther than 3 voxels"):
        ssim(z, z, edge_only)


# ----------------------------------------------------------------------------- score / aggregate
def test_score_and_aggregate():
    gt = np.zeros((8, 8, 8))
    mask = np.ones_like(gt)
    scores = [score(gt, gt + d, mask) for d in (2.0, 4.0, 9.0)]
    assert set(scores[0]) == {"mae", "psnr", "ssim"}
    agg = aggregate(scores)
    assert agg["n"] == 3
    assert agg["mae"]["mean"] == pytest.approx(5.0)
    assert agg["mae"]["median"] == pytest.approx(4.0)
    assert agg["mae"]["sd"] == pytest.approx(np.std([2, 4, 9], ddof=1))
    assert agg["psnr"]["median"] == pytest.approx(20 * math.log10(4024 / 4.0))
    json.dumps(agg)
    assert aggregate([{"mae": 3.0}])["mae"] == {"mean": 3.0, "sd": 0.0, "median": 3.0}
    with_inf = aggregate([{"psnr": math.inf}, {"psnr": 30.0}, {"psnr": 40.0}])["psnr"]
    assert with_inf["mean"] == math.inf and with_inf["median"] == 40.0


def test_aggregate_errors():
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])
    with pytest.raises(ValueError, match="dict 1 lacks metric 'ssim'"):
        aggregate([{"mae": 1.0, "ssim": 0.9}, {"mae": 2.0}])
    with pytest.raises(ValueError, match="dict 0 field 'mae'"):
        aggregate([{"mae": "bad"}])


def test_dynamic_range_constant():
    assert DYNAMIC_RANGE == (-1024.0, 3000.0)


# ----------------------------------------------------------------------------- lesion audit
SHAPE = (30, 30, 30)
LESION_CENTRE = (15, 12, 12)


def _phantom(with_lesion=True):
    """Body cube of 40 HU soft tissue with a 700 HU bone block; optional 90 HU ball lesion."""
    ct = np.full(SHAPE, -1000.0)
    body = np.zeros(SHAPE, bool)
    body[2:-2, 2:-2, 2:-2] = True
    ct[body] = 40.0
    ct[4:26, 22:26, 4:26] = 700.0            # a bone slab
    lesion = _ball(SHAPE, LESION_CENTRE, 3) if with_lesion else np.zeros(SHAPE, bool)
    ct[lesion] = 90.0                        # contrast +50 HU
    return ct, lesion, body


def test_noise_floor_is_the_voxel_noise_not_the_edges(rng):
    ct, _, body = _phantom(with_lesion=False)
    noisy = ct + rng.normal(0, 12, SHAPE)
    assert noise_floor_hu(noisy, body, (1.0, 1.0, 1.0)) == pytest.approx(12.0, rel=0.1)
    assert noise_floor_hu(noisy, np.zeros(SHAPE, bool), (1.0, 1.0, 1.0)) == 0.0


def test_audit_kept_lesion_and_noise_pass(rng):
    ct, lesion, body = _phantom()
    true = ct + rng.normal(0, 10, SHAPE)
    pred = ct + rng.normal(0, 15, SHAPE)
    res = lesion_audit(true, pred, lesion, body)
    assert res["n_true"] == 1 and res["n_evaluable"] == 1 and res["n_preserved"] == 1
    les = res["lesions"][0]
    assert les["status"] == "kept"
    assert les["true_contrast"] == pytest.approx(50.0, abs=4.0)
    assert les["pred_contrast"] == pytest.approx(50.0, abs=5.0)
    assert les["volume_mm3"] == float(lesion.sum())
    assert res["noise_hu"] == pytest.approx(math.hypot(10, 15), rel=0.15)  # the residual's floor
    assert res["n_invented"] == 0 and res["n_removed"] == 0 and res["passed"] is True
    json.dumps(res)                          # report-ready


def test_audit_removed_weak_and_inverted_lesions_fail(rng):
    ct, lesion, body = _phantom()
    true = ct + rng.normal(0, 10, SHAPE)
    for lesion_hu, expected_contrast in ((40.0, 0.0), (55.0, 15.0), (0.0, -40.0)):
        pred_clean = ct.copy()
        pred_clean[lesion] = lesion_hu
        pred = pred_clean + rng.normal(0, 10, SHAPE)
        res = lesion_audit(true, pred, lesion, body)
        les = res["lesions"][0]
        assert les["evaluable"] is True and les["status"] == "removed", lesion_hu
        assert les["preserved"] is False
        assert les["pred_contrast"] == pytest.approx(expected_contrast, abs=5.0)
        assert res["n_invented"] == 0        # the lesion's own area is judged by part (a) only
        assert res["n_removed"] == 1 and res["passed"] is False


def test_audit_invented_blob_detected(rng):
    ct, _, body = _phantom(with_lesion=False)
    true = ct + rng.normal(0, 10, SHAPE)
    blob = _ball(SHAPE, (15, 10, 12), 3)
    pred = ct + rng.normal(0, 10, SHAPE)
    pred[blob] += 60.0
    res = lesion_audit(true, pred, None, body)
    assert res["n_true"] == 0 and res["n_invented"] == 1 and res["passed"] is False
    inv = res["invented"][0]
    assert 0.3 * blob.sum() <= inv["volume_mm3"] <= 2.0 * blob.sum()
    assert inv["mean_diff_hu"] > 25.0
    assert np.allclose(inv["centroid_voxel"], (15, 10, 12), atol=1.0)
    # the same blob with 2 mm voxels along axis 0 is a larger volume in mm3
    res2 = lesion_audit(true, pred, None, body, spacing=(2.0, 1.0, 1.0))
    assert res2["n_invented"] == 1
    assert res2["invented"][0]["volume_mm3"] > inv["volume_mm3"]
    # a blob inside the border margin is not searched: a 10 mm margin covers it
    assert lesion_audit(true, pred, None, body, border_margin_mm=10.0)["n_invented"] == 0


def test_audit_ignores_noise_tiny_blobs_offsets_and_bone_edge_shift(rng):
    ct, _, body = _phantom(with_lesion=False)
    true = ct + rng.normal(0, 10, SHAPE)
    noisy = ct + rng.normal(0, 20, SHAPE)
    assert lesion_audit(true, noisy, None, body)["n_invented"] == 0
    tiny = ct + rng.normal(0, 10, SHAPE)
    tiny[15, 10, 10] += 100.0                # one voxel: not lesion-sized
    assert lesion_audit(true, tiny, None, body)["n_invented"] == 0
    offset = ct + 30.0 + rng.normal(0, 10, SHAPE)  # a calibration offset: MAE's business
    assert lesion_audit(true, offset, None, body)["n_invented"] == 0
    shifted = np.roll(ct, 1, axis=1) + rng.normal(0, 10, SHAPE)  # bone slab misregistered 1 voxel
    shifted[~body] = -1000.0
    assert lesion_audit(true, shifted, None, body)["passed"] is True


def test_audit_unevaluable_lesions_do_not_fail(rng):
    ct, lesion, body = _phantom()
    ct[lesion] = 45.0                        # 5 HU: invisible in the true CT
    res = lesion_audit(ct, np.where(lesion, 40.0, ct), lesion, body)
    assert res["n_true"] == 1 and res["n_evaluable"] == 0 and res["passed"] is True
    assert res["lesions"][0]["status"] == "not evaluable" and "below" in res["lesions"][0]["reason"]
    small = _ball(SHAPE, LESION_CENTRE, 1)   # 7 voxels, +15 HU under 30 HU noise: 3 sd of the
    noisy = ct + rng.normal(0, 30, SHAPE)    # contrast's noise is ~36 HU, so it cannot be judged
    noisy[small] += 15.0
    res_n = lesion_audit(noisy, noisy, small, body)
    assert res_n["lesions"][0]["evaluable"] is False and "noise floor" in res_n["lesions"][0]["reason"]


def test_audit_two_lesions_counted_separately(rng):
    ct, lesion, body = _phantom()
    second = _ball(SHAPE, (15, 12, 20), 2)
    ct[second] = 0.0                         # hypodense lesion, contrast -40
    both = lesion | second
    pred = ct.copy()
    pred[second] = 40.0                      # the hypodense one is lost
    res = lesion_audit(ct, pred, both, body)
    assert res["n_true"] == 2 and res["n_preserved"] == 1 and res["n_removed"] == 1
    by_sign = sorted(res["lesions"], key=lambda e: e["true_contrast"])
    assert by_sign[0]["true_contrast"] < 0 and by_sign[0]["status"] == "removed"
    assert by_sign[1]["status"] == "kept"


def test_tissue_labels_separate_the_classes_and_contrast_stays_inside_one(rng):
    """With a label map, grey and white matter are audited apart: a model that gets grey matter
    60 HU wrong everywhere (a tissue offset: the tissue report's business) invents nothing."""
    ct, lesion, body = _phantom()
    labels = np.where(body, 7, 0).astype(np.uint8)
    labels[:, :, :15] = np.where(body[:, :, :15], 6, 0)   # grey matter half, white matter half
    labels[ct == 700.0] = 3
    true = ct + rng.normal(0, 10, SHAPE)
    pred = ct + rng.normal(0, 10, SHAPE) + np.where(labels == 6, 60.0, 0.0)
    res = lesion_audit(true, pred, lesion, body, labels=labels)
    assert res["n_invented"] == 0 and res["lesions"][0]["status"] == "kept"
    assert lesion_audit(true, pred, lesion, body)["n_invented"] > 0  # one class: the step shows


def test_border_margin_is_learned_where_the_baselines_error_stops_depending_on_the_border(rng):
    ct, _, body = _phantom(with_lesion=False)
    near_bone = ndimage.binary_dilation(ct == 700.0, iterations=3) & (ct != 700.0)
    cases = []
    for k in range(3):
        true = ct + rng.normal(0, 10, SHAPE)
        base = ct + rng.normal(0, 10, SHAPE) + np.where(near_bone, rng.normal(0, 60, SHAPE), 0.0)
        cases.append((true, base, None, body, None, (1.0, 1.0, 1.0)))
    learned = learn_border_margin(cases, interior_mm=6.0)
    assert 3.0 <= learned["margin_mm"] <= 6.0, learned
    assert learned["cases"] == 3 and learned["layers"]["1"][0] > learned["interior_level"]
    true, base = cases[0][:2]
    assert lesion_audit(true, base, None, body, border_margin_mm=0.0)["n_invented"] > 0
    assert lesion_audit(true, base, None, body, border_margin_mm=learned["margin_mm"])["n_invented"] == 0
    with pytest.raises(ValueError, match="no case"):
        learn_border_margin([])


def test_audit_input_errors():
    ct, lesion, body = _phantom()
    with pytest.raises(ValueError, match="lesion mask shape"):
        lesion_audit(ct, ct, lesion[:-1], body)
    with pytest.raises(ValueError, match="labels shape"):
        lesion_audit(ct, ct, lesion, body, labels=lesion[:-1])
    with pytest.raises(ValueError, match="spacing"):
        lesion_audit(ct, ct, lesion, body, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="detect_sigmas"):
        lesion_audit(ct, ct, lesion, body, detect_sigmas=-1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        lesion_audit(ct, ct, lesion, body, invent_threshold_hu=25.0)
    with pytest.raises(ValueError, match="border_margin_mm"):
        lesion_audit(ct, ct, lesion, body, border_margin_mm=float("nan"))
    with pytest.raises(ValueError, match="mask is empty"):
        lesion_audit(ct, ct, lesion, np.zeros_like(body))
