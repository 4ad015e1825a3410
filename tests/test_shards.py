import json

import numpy as np
import pytest
import torch

from gan_core.data.nifti import load_volume
from gan_core.data.normalize import ct_to_unit
from gan_core.data.shards import (InfiniteSampler, PatchDataset, Shards, SliceDataset, SubjectFiles,
                                  cohort_subjects, pack_shards, split_subjects)


def test_split_is_by_subject_seeded_and_disjoint():
    ids = [f"s{i:02d}" for i in range(10)]
    a, b = split_subjects(ids, seed=3), split_subjects(ids, seed=3)
    assert a == b
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert not set(a["train"]) & set(a["test"]) and len(a["val"]) == 2
    assert split_subjects(ids, seed=4) != a
    with pytest.raises(ValueError, match="too few"):
        split_subjects(["x", "y", "z"], (0.0, 0.5, 0.5))


def test_pack_shards_contents_match_nifti(tiny_cohort, tmp_path):
    subs = cohort_subjects(tiny_cohort)[:2]
    index = pack_shards(subs, tmp_path / "sh")
    sh = Shards(tmp_path / "sh")
    assert index["n_slices"] == sum(load_volume(s.mr).array.shape[2] for s in subs)
    slab = sh.subject_slab(1)
    ct = load_volume(subs[1].ct).array
    np.testing.assert_allclose(slab["ct"], np.moveaxis(ct_to_unit(ct), 2, 0), atol=1e-6)
    assert slab["mr"].min() >= -1 and slab["mr"].max() <= 1
    assert sh.arrays["mr"].__class__.__name__ == "memmap"
    assert not list(tmp_path.glob(".sh.*")), "temp dir left behind"


def test_pack_rejects_mismatched_grids(tiny_cohort, tmp_path):
    s0, s1 = cohort_subjects(tiny_cohort)[:2]
    bad = tmp_path / "bad"
    bad.mkdir()
    import nibabel as nib
    mr = nib.load(s0.mr)
    nib.save(nib.Nifti1Image(np.asarray(mr.dataobj)[:-2], mr.affine), bad / "mr.nii.gz")
    for n in ("ct", "mask"):
        (bad / f"{n}.nii.gz").write_bytes(open(getattr(s0, n), "rb").read())
    with pytest.raises(ValueError, match="MR"):
        pack_shards([SubjectFiles.from_dir(bad)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_files_named(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "mr.nii.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="ct.nii.gz"):
        cohort_subjects(tmp_path)
    with pytest.raises(FileNotFoundError, match="index.json"):
        Shards(tmp_path)


def test_sampler_is_resumable_and_sharded():
    s = InfiniteSampler(10, paired=False, seed=1)
    stream = [k for _, k in zip(range(25), s)]
    resumed = [k for _, k in zip(range(12), InfiniteSampler(10, paired=False, seed=1, start=13))]
    assert stream[13:25] == resumed
    assert any(a != b for _, a, b in stream)               # unpaired: independent B
    assert all(a == b for _, a, b in (k for _, k in zip(range(10), InfiniteSampler(10, paired=True))))
    r0 = {a for _, (e, a, b) in zip(range(5), InfiniteSampler(10, paired=True, rank=0, world_size=2))}
    r1 = {a for _, (e, a, b) in zip(range(5), InfiniteSampler(10, paired=True, rank=1, world_size=2))}
    assert not r0 & r1 and len(r0 | r1) == 10


def test_slice_dataset_crops_flips_deterministically(tiny_shards):
    ds = SliceDataset(tiny_shards / "train", image_size=32, flip=True, min_body_fraction=0.05)
    a, b = ds[(0, 3, 3)], ds[(0, 3, 3)]
    assert a["A"].shape == (1, 32, 32) and torch.equal(a["A"], b["A"])
    # paired: the crop of A and B is from the same slice and place -> CT body where MR body
    whole = SliceDataset(tiny_shards / "train")[int(3)]
    assert whole["A"].shape[-1] == 40
    with pytest.raises(ValueError, match="larger"):
        SliceDataset(tiny_shards / "train", image_size=64)[(0, 0, 0)]


def test_patch_dataset(tiny_shards):
    ds = PatchDataset(tiny_shards / "train", patch=(8, 32, 32))
    x = ds[(0, 0, 0)]
    assert x["A"].shape == (1, 8, 32, 32) and x["B"].shape == (1, 8, 32, 32)
    with pytest.raises(ValueError, match="does not fit"):
        PatchDataset(tiny_shards / "train", patch=(64, 32, 32))


def test_shard_index_records_sources(tiny_shards):
    index = json.loads((tiny_shards / "test" / "index.json").read_text())
    assert all(s["source"]["mr"].endswith("mr.nii.gz") for s in index["subjects"])


def test_split_is_stratified_by_lesion_presence():
    """Every test split gets >= 2 lesion subjects when there are >= 2 (the demo's 12 subjects:
    2 test subjects, both with lesions), whatever the seed; strata must cover every id."""
    ids = [f"s{i:02d}" for i in range(12)]
    for seed in range(20):
        strata = {s: bool(np.random.default_rng(seed + 100).random() < 0.4) or s in ("s03", "s07")
                  for s in ids}
        split = split_subjects(ids, seed=seed, strata=strata)
        assert sorted(sum(split.values(), [])) == ids
        assert [len(split[k]) for k in ("train", "val", "test")] == [8, 2, 2]
        assert sum(strata[s] for s in split["test"]) == 2
        assert split == split_subjects(ids, seed=seed, strata=strata)  # deterministic
    one = {s: s == "s05" for s in ids}
    assert split_subjects(ids, seed=0, strata=one)["test"].count("s05") == 1
    with pytest.raises(ValueError, match="no lesion flag"):
        split_subjects(ids, strata={"s00": True})
