"""The synthetic-data augmentation experiment (gan_core.eval.augmentation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gan_core.eval.augmentation import (
    augmentation_table,
    class_names,
    lut_synthesizer,
    run_augmentation_experiment,
    synthesize_slices,
)
from gan_core.data.normalize import unit_to_ct
from gan_core.data.phantom import TISSUES
from gan_core.data.shards import Shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(n_real_subjects=1, n_synthetic=12, steps=12, batch_size=4, widths=(4, 8))


@pytest.fixture(scope="module")
def lut(tiny_shards):
    return lut_synthesizer(tiny_shards / "train")


@pytest.fixture(scope="module")
def report(tiny_shards, lut):
    return run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", lut,
                                       seed=3, repeats=2, **FAST)


def test_lut_synthesizer_paints_each_tissue_with_its_mean_training_hu(tiny_shards, lut):
    sh = Shards(tiny_shards / "train")
    labels = np.asarray(sh.arrays["labels"][:8]).astype(np.int64)
    img = synthesize_slices(lut, labels, 10)
    assert img.shape == (8, 1, 40, 40) and img.dtype == np.float32
    hu = unit_to_ct(img[:, 0])
    all_lab, all_hu = np.asarray(sh.arrays["labels"]), unit_to_ct(np.asarray(sh.arrays["ct"], np.float64))
    for name in ("soft_tissue", "cortical_bone", "white_matter"):
        t = TISSUES[name]
        assert np.allclose(hu[labels == t], all_hu[all_lab == t].mean(), atol=1.0)
    assert hu[labels == TISSUES["cortical_bone"]].mean() > hu[labels == TISSUES["soft_tissue"]].mean() + 500


def test_synthesize_slices_validates_the_synthesizer_and_seeds_stochastic_ones(lut):
    labels = np.random.default_rng(0).integers(0, 10, size=(5, 8, 8))

    def noisy(onehot: torch.Tensor) -> torch.Tensor:  # the LUT image plus fresh noise per call
        return lut(onehot) + 0.5 * torch.randn(onehot.shape[0], 1, *onehot.shape[2:])

    a = synthesize_slices(noisy, labels, 10, seed=1, batch_size=2)
    np.testing.assert_array_equal(a, synthesize_slices(noisy, labels, 10, seed=1, batch_size=2))
    assert not np.array_equal(a, synthesize_slices(noisy, labels, 10, seed=2, batch_size=2))
    assert a.min() >= -1 and a.max() <= 1  # clipped
    with pytest.raises(ValueError, match=r"expected a tensor \(B, 1, H, W\)"):
        synthesize_slices(lambda oh: oh[:, :2], labels, 10)
    with pytest.raises(ValueError, match="non-finite"):
        synthesize_slices(lambda oh: torch.full((oh.shape[0], 1, 8, 8), float("nan")), labels, 10)
    with pytest.raises(ValueError, match="n_classes 4"):
        synthesize_slices(lut, labels, 4)


def test_experiment_reports_finite_dice_for_both_arms(report, tiny_shards):
    json.dumps(report, allow_nan=False)  # JSON-ready: no NaN anywhere
    st = report["settings"]
    train = Shards(tiny_shards / "train")
    assert st["real_subjects"] == [train.subjects[0]["id"]] and st["n_synthetic"] == 12
    assert st["test_subjects"] == [s["id"] for s in Shards(tiny_shards / "test").subjects]
    assert st["label_source_shards"] == str(tiny_shards / "train")
    assert 0 < st["n_real_slices"] <= train.subjects[0]["depth"]
    assert report["class_names"] == class_names(10) and report["class_names"][3] == "cortical_bone"
    for arm in ("real", "augmented"):
        r = report[arm]
        assert 0.0 <= r["mean"] <= 1.0
        assert len(r["per_repeat"]) == 2 and all(0.0 <= v <= 1.0 for v in r["per_repeat"])
        assert r["mean"] == pytest.approx(np.mean(r["per_repeat"]))
        assert r["sd_subjects"] is not None and r["sd_repeats"] is not None
        assert [s["id"] for s in r["per_subject"]] == st["test_subjects"]
        assert len(r["per_class"]) == 10 and r["per_class"][0] is not None
        assert all(v is None or 0.0 <= v <= 1.0 for v in r["per_class"])
    gain = report["gain"]
    assert gain["mean"] == pytest.approx(report["augmented"]["mean"] - report["real"]["mean"])
    assert [run["seed"] for run in report["runs"]] == [3, 4]
    for run in report["runs"]:  # each repeat's arm mean is the mean over test subjects
        subj = [s["mean_dice"] for s in run["real"]["per_subject"]]
        assert run["real"]["mean"] == pytest.approx(np.mean(subj))


def test_experiment_is_deterministic_for_a_seed(report, tiny_shards, lut):
    again = run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", lut,
                                        seed=3, repeats=2, **FAST)
    assert again == report


def test_real_only_arm_and_a_separate_label_source(tiny_shards, lut):
    real_only = run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", None,
                                            seed=0, **FAST)
    assert real_only["augmented"] is None and real_only["gain"] is None
    assert real_only["settings"]["n_synthetic"] == 0 and 0 <= real_only["real"]["mean"] <= 1
    assert real_only["real"]["sd_repeats"] is None  # one repeat: no spread over repeats
    table = augmentation_table(real_only)
    assert "| real only |" in table and "real + synthetic" not in table

    val = Shards(tiny_shards / "val")
    frac = np.asarray(val.arrays["mask"]).reshape(val.index["n_slices"], -1).astype(bool).mean(1)
    rep = run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", lut, seed=0,
                                      label_source_shards=tiny_shards / "val", **FAST)
    assert rep["settings"]["label_source_shards"] == str(tiny_shards / "val")
    assert rep["settings"]["n_label_maps_available"] == int(np.sum(frac >= 0.05))
    # the same seed gives the same real-only arm whether or not a synthesizer is given
    assert rep["real"] == real_only["real"]


def test_augmentation_table_lists_arms_gain_and_foreground_classes(report):
    table = augmentation_table(report)
    assert "| real only |" in table and "| real + synthetic |" in table and "| gain |" in table
    assert f"{report['real']['mean']:.3f} ± {report['real']['sd_subjects']:.3f}" in table
    assert "| white_matter |" in table and "| air |" not in table  # background not listed
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 2 + 3 + 9


def test_experiment_validates_its_arguments(tiny_shards, lut):
    with pytest.raises(ValueError, match="n_real_subjects: expected 1..2"):
        run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", lut,
                                    **{**FAST, "n_real_subjects": 3})
    with pytest.raises(ValueError, match="n_synthetic"):
        run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", lut,
                                    **{**FAST, "n_synthetic": 0})
    with pytest.raises(ValueError, match="repeats"):
        run_augmentation_experiment(tiny_shards / "train", tiny_shards / "test", lut,
                                    repeats=0, **FAST)
