"""The tissue segmenter, its training and the Dice scores (gan_core.eval.segment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan_core.eval.segment import (
    SegUNet,
    class_mean,
    dice_per_class,
    load_segmenter,
    load_slices,
    mean_dice,
    predict,
    save_segmenter,
    train_segmenter,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- Dice ---------------------------------------------------------------------------------------

def test_dice_of_a_perfect_prediction_is_one_and_absent_classes_are_nan():
    truth = np.random.default_rng(0).integers(0, 3, size=(4, 6, 6))  # classes 0..2 of 5
    d = dice_per_class(truth, truth, 5)
    assert d.shape == (5,)
    assert np.all(d[:3] == 1.0)
    assert np.isnan(d[3]) and np.isnan(d[4])
    assert mean_dice(truth, truth, 5) == 1.0


def test_dice_of_disjoint_labels_is_zero():
    truth = np.zeros((8, 8), np.int64)
    truth[:4] = 1
    pred = np.zeros_like(truth)
    pred[4:] = 1  # class 1 where the truth is 0 and vice versa
    d = dice_per_class(pred, truth, 3)
    assert d[0] == 0.0 and d[1] == 0.0 and np.isnan(d[2])
    assert mean_dice(pred, truth, 3) == 0.0


def test_dice_matches_a_hand_count_and_background_is_excluded_by_default():
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 3]])
    d = dice_per_class(pred, truth, 4)
    # class 0: |P|=2, |T|=3, inter=1; class 1: |P|=3,|T|=2, inter 2; class 2: 2,3,2; class 3: 1,0,0
    np.testing.assert_allclose(d, [2 / 5, 4 / 5, 4 / 5, 0.0])
    assert mean_dice(pred, truth, 4) == pytest.approx((4 / 5 + 4 / 5 + 0.0) / 3)
    assert mean_dice(pred, truth, 4, include_background=True) == pytest.approx(np.mean(d))
    assert math.isnan(class_mean(np.array([1.0, np.nan, np.nan])))


def test_dice_rejects_mismatched_shapes_and_out_of_range_labels():
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="truth: label values must be in 0..1"):
        dice_per_class(np.zeros((2, 2)), np.full((2, 2), 2), 2)


# -- network ------------------------------------------------------------------------------------

def test_segunet_keeps_any_slice_size_and_validates_its_input():
    net = SegUNet(n_classes=4, widths=(4, 8, 8))
    assert net(torch.zeros(2, 1, 13, 22)).shape == (2, 4, 13, 22)
    with pytest.raises(ValueError, match=r"expected input \(N, 1, H, W\)"):
        net(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="n_classes"):
        SegUNet(n_classes=1)


# -- data ---------------------------------------------------------------------------------------

def test_load_slices_returns_images_labels_and_subjects(tiny_shards):
    from gan_core.data.shards import Shards

    sh = Shards(tiny_shards / "train")
    images, labels, subj = load_slices(tiny_shards / "train", modality="mr")
    n = sh.index["n_slices"]
    assert images.shape == (n, 1, 40, 40) and images.dtype == np.float32
    assert labels.shape == (n, 40, 40) and labels.dtype == np.int64
    assert images.min() >= -1 and images.max() <= 1
    np.testing.assert_array_equal(images[:, 0], sh.arrays["mr"])
    np.testing.assert_array_equal(labels, sh.arrays["labels"])
    assert np.bincount(subj).tolist() == [s["depth"] for s in sh.subjects]

    frac = sh.arrays["mask"].reshape(n, -1).astype(bool).mean(1)
    thr = float(np.median(frac))
    ct, lab, sub1 = load_slices(tiny_shards / "train", "ct", min_body_fraction=thr, subjects=[1])
    s1 = sh.subjects[1]
    keep = np.flatnonzero(frac[s1["offset"]:s1["offset"] + s1["depth"]] >= thr) + s1["offset"]
    assert 0 < ct.shape[0] < s1["depth"] and set(sub1.tolist()) == {1}
    np.testing.assert_array_equal(ct[:, 0], sh.arrays["ct"][keep])
    np.testing.assert_array_equal(lab, sh.arrays["labels"][keep])


def test_load_slices_errors(tiny_cohort, tiny_shards, tmp_path):
    from dataclasses import replace

    from gan_core.data.shards import SubjectFiles, pack_shards

    sub = SubjectFiles.from_dir(sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0])
    pack_shards([replace(sub, labels=None)], tmp_path / "nolabels")
    with pytest.raises(ValueError, match="no tissue labels"):
        load_slices(tmp_path / "nolabels")
    with pytest.raises(ValueError, match="modality"):
        load_slices(tiny_shards / "train", modality="pet")
    with pytest.raises(ValueError, match="subjects: index 9"):
        load_slices(tiny_shards / "train", subjects=[9])


# -- training -----------------------------------------------------------------------------------

def test_training_improves_dice_on_held_out_subjects(tiny_shards):
    x, y, _ = load_slices(tiny_shards / "train", "ct", min_body_fraction=0.05)
    xt, yt, st = load_slices(tiny_shards / "test", "ct")
    untrained = train_segmenter(x, y, n_classes=10, steps=0, seed=0)
    trained = train_segmenter(x, y, n_classes=10, steps=250, seed=0)

    def score(model) -> float:
        pred = predict(model, xt)
        return float(np.mean([mean_dice(pred[st == s], yt[st == s], 10) for s in np.unique(st)]))

    before, after = score(untrained), score(trained)
    assert 0.0 <= before < 0.15
    assert after > 0.35 and after > before + 0.25
    # the trained model gets the background and several tissues right
    d = dice_per_class(predict(trained, xt), yt, 10)
    assert d[0] > 0.95 and np.sum(d[1:] > 0.5) >= 3


def test_training_is_deterministic_for_a_seed_and_weights_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=(6, 12, 12))
    x = (y / 2.0 - 0.5 + 0.1 * rng.standard_normal(y.shape))[:, None].astype(np.float32)
    kw = dict(n_classes=3, steps=5, batch_size=4, widths=(4, 8))
    torch.manual_seed(123)
    a = train_segmenter(x, y, seed=7, **kw)
    global_after = torch.rand(1)
    b = train_segmenter(x, y, seed=7, **kw)
    c = train_segmenter(x, y, seed=8, **kw)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), global_after)  # training leaves torch's global RNG alone

    save_segmenter(a, tmp_path / "seg.pt")
    loaded = load_segmenter(tmp_path / "seg.pt")
    assert loaded.widths == (4, 8) and loaded.n_classes == 3
    np.testing.assert_array_equal(predict(loaded, x), predict(a, x))
    torch.save(a.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="pass n_classes= and widths="):
        load_segmenter(tmp_path / "bare.pt")
    bare = load_segmenter(tmp_path / "bare.pt", n_classes=3, widths=(4, 8))
    np.testing.assert_array_equal(predict(bare, x), predict(a, x))


def test_train_segmenter_validates_its_inputs():
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="labels: values must be in 0..2"):
        train_segmenter(x, np.full((2, 8, 8), 3), n_classes=3, steps=1)
    with pytest.raises(ValueError, match="same number of slices"):
        train_segmenter(x, np.zeros((3, 8, 8), np.int64), n_classes=3, steps=1)
    with pytest.raises(ValueError, match="steps"):
        train_segmenter(x, np.zeros((2, 8, 8), np.int64), n_classes=3, steps=-1)
