"""Lesion-aware slice sampling (gan_core.data.lesion_sampling) on real packed phantom shards."""

from __future__ import annotations

import numpy as np
import pytest

from gan_core.data.lesion_sampling import LesionSampler, lesion_positions
from gan_core.data.pack import pack_cohort
from gan_core.data.phantom import write_cohort
from gan_core.data.shards import InfiniteSampler, Shards, SliceDataset


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory) -> Shards:
    root = tmp_path_factory.mktemp("lesion_sampling")
    write_cohort(root / "cohort", subjects=5, seed=3, shape=(32, 32, 16), spacing=(6.0, 6.0, 8.0),
                 lesion_prevalence=1.0)
    pack_cohort(root / "cohort", root / "shards", split=(0.6, 0.2, 0.2), seed=0)
    return Shards(root / "shards" / "train")


def test_lesion_positions_are_exactly_the_slices_with_lesion_voxels(train_shards):
    ds = SliceDataset(train_shards, min_body_fraction=0.1)
    pos = lesion_positions(train_shards, ds.slices)
    les = np.asarray(train_shards.arrays["lesion"]) > 0
    expected = [i for i, z in enumerate(ds.slices) if les[z].any()]
    assert pos.tolist() == expected
    assert 0 < len(expected) < len(ds)  # the premise: some slices have lesions, most do not


def test_lesion_positions_names_the_folder_when_masks_are_missing(train_shards):
    class NoLesion:
        arrays = {k: v for k, v in train_shards.arrays.items() if k != "lesion"}
        dir = train_shards.dir

    with pytest.raises(ValueError, match=r"has no 'lesion' array"):
        lesion_positions(NoLesion(), [0, 1])


def test_fraction_of_lesion_samples_and_pairing():
    pos = np.array([2, 7])
    s = LesionSampler(50, paired=True, seed=1, lesion_positions=pos, fraction=0.3)
    keys = next(s.batches(20_000))
    # each slot is a lesion slot with p = 0.3, plus the plain permutation's own lesion slices
    # (2 of 50): expected share 0.3 + 0.7 * 2 / 50 = 0.328; binomial sd over 20k is 0.0033
    share = float(np.isin(keys[:, 1], pos).mean())
    assert abs(share - 0.328) < 0.02
    assert (keys[:, 1] == keys[:, 2]).all()
    # both lesion slices are drawn, about equally
    counts = np.bincount(keys[np.isin(keys[:, 1], pos), 1], minlength=8)[pos]
    assert abs(counts[0] - counts[1]) < 0.1 * counts.sum()


def test_zero_fraction_is_the_plain_sampler():
    kw = dict(paired=False, seed=4, world_size=2, rank=1, start=13)
    plain = next(InfiniteSampler(40, **kw).batches(300))
    lesion = next(LesionSampler(40, lesion_positions=np.array([5]), fraction=0.0, **kw).batches(300))
    assert np.array_equal(plain, lesion)


def test_resume_sees_the_same_keys():
    kw = dict(paired=True, seed=0, lesion_positions=np.array([1, 3]), fraction=0.5)
    full = next(LesionSampler(30, **kw).batches(100))
    resumed = next(LesionSampler(30, start=37, **kw).batches(63))
    assert np.array_equal(full[37:], resumed)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="fraction"):
        LesionSampler(10, paired=True, lesion_positions=np.array([1]), fraction=bad)


def test_out_of_range_positions_are_refused():
    with pytest.raises(ValueError, match=r"lesion positions must lie in \[0, 10\)"):
        LesionSampler(10, paired=True, lesion_positions=np.array([10]), fraction=0.2)
