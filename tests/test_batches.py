"""The batch data path equals the per-sample one; keys, draws and prefetch order are unchanged."""

import numpy as np
import pytest
import torch

from gan_core.data.batches import INT16_SCALE, SliceBatches, crop_flip, prefetch, stack_samples
from gan_core.data.shards import InfiniteSampler, Shards, SliceDataset, crop_draws, keyed_uniforms
from gan_core.presets import preset
from gan_core.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _keys(n=12, seed=5, paired=False):
    return next(InfiniteSampler(20, paired=paired, seed=seed).batches(n))


@pytest.mark.parametrize("task_name", ["mr2ct", "kspace", "labels2ct", "synth"])
@pytest.mark.parametrize("method", ["slices", "take", "host", "host-crop-device-flip"])
def test_batch_equals_stacked_samples(tiny_shards, task_name, method):
    cfg = preset("tiny", "pix2pix" if task_name != "synth" else "dcgan", task_name)
    task = build_task(cfg.task)
    kw = dict(image_size=24, flip=True, seed=3, min_body_fraction=0.05)
    ds = SliceDataset(tiny_shards / "train", task=task, **kw)
    sb = SliceBatches(Shards(tiny_shards / "train"), task=task, keys={"A", "B", "mask", "labels"},
                      crop_on_host=method.startswith("host"),
                      flip_on_host=False if method == "host-crop-device-flip" else None, **kw)
    keys = _keys(paired=False)
    keys[:, 1:] %= len(ds)
    got = sb.finish(sb.read(keys), method="auto" if method.startswith("host") else method)
    want = stack_samples([ds[tuple(k)] for k in keys.tolist()])
    assert set(got) == {"A", "B", "mask", "labels"}
    for k in got:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), f"{task_name}: {k} differs"
    flips = crop_draws(3, keys, (40, 40), 24)[2]
    assert flips.any() and not flips.all()  # both branches were compared


def test_only_asked_arrays_cross_and_no_crop_path(tiny_shards):
    task = build_task(preset("tiny", "pix2pix").task)
    sb = SliceBatches(Shards(tiny_shards / "train"), image_size=None, flip=False, seed=0, task=task,
                      crop_on_host=False)
    hb = sb.read(_keys(4, paired=True))
    assert set(hb) == {"A", "B", "y", "x", "flip"}
    out = sb.finish(hb)
    assert set(out) == {"A", "B"} and out["A"].shape == (4, 1, 40, 40)
    with pytest.raises(ValueError, match="batch keys"):
        SliceBatches(Shards(tiny_shards / "train"), image_size=None, flip=False, seed=0, task=task,
                     keys={"A", "B", "weights"})


def test_resident_equals_streamed_to_int16_rounding(tiny_shards):
    task = build_task(preset("tiny", "pix2pix").task)
    kw = dict(image_size=32, flip=True, seed=1, task=task, keys={"A", "B", "labels"})
    streamed = SliceBatches(Shards(tiny_shards / "train"), crop_on_host=False, **kw)
    resident = SliceBatches(Shards(tiny_shards / "train"), resident=True, **kw)
    assert resident.resident_bytes() == 32 * 40 * 40 * (2 + 2 + 1)
    keys = _keys(8)
    keys[:, 1:] %= len(streamed)
    a, b = streamed(keys), resident(keys)
    for k in ("A", "B"):
        assert (a[k] - b[k]).abs().max() <= 0.5 / INT16_SCALE + 1e-7
    assert torch.equal(a["labels"], b["labels"])
    with pytest.raises(ValueError, match="per_sample"):
        SliceBatches(Shards(tiny_shards / "train"), image_size=32, flip=True, seed=1, resident=True,
                     task=build_task(preset("tiny", "pix2pix", "kspace").task))


def test_prefetch_threads_keep_order_and_values(tiny_shards):
    task = build_task(preset("tiny", "pix2pix").task)
    sb = SliceBatches(Shards(tiny_shards / "train"), image_size=24, flip=True, seed=2, task=task)
    n = len(sb)
    first = sb(next(InfiniteSampler(n, paired=False, seed=2).batches(3)))
    gen0 = prefetch(sb, InfiniteSampler(n, paired=False, seed=2).batches(3), batch_size=3, workers=0)
    gen2 = prefetch(sb, InfiniteSampler(n, paired=False, seed=2).batches(3), batch_size=3, workers=2)
    a = [next(gen0) for _ in range(9)]   # > slots: every slot is reused
    b = [next(gen2) for _ in range(9)]
    gen2.close()
    assert torch.equal(first["A"], a[0]["A"])
    for x, y in zip(a, b):
        assert torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"])
    assert not torch.equal(a[0]["A"], a[1]["A"])


def test_sampler_batches_are_the_chunked_stream():
    for paired, start in ((False, 0), (True, 7), (False, 13)):
        s = InfiniteSampler(10, paired=paired, seed=4, start=start)
        flat = [k for _, k in zip(range(33), s)]
        chunks = [b for _, b in zip(range(11), s.batches(3))]   # spans 3+ epochs
        assert [tuple(k) for c in chunks for k in c.tolist()] == flat


def test_keyed_draws_are_uniform_and_key_bound():
    keys = np.stack([np.zeros(40_000, np.int64), np.arange(40_000), np.arange(40_000)[::-1]], 1)
    y, x, fl = crop_draws(0, keys, (40, 44), 32)
    assert y.min() == 0 and y.max() == 8 and x.max() == 12
    counts = np.bincount(y, minlength=9)
    expected = len(y) / 9
    assert ((counts - expected) ** 2 / expected).sum() < 30   # chi2, 8 dof: p ~ 2e-4
    assert abs(fl.mean() - 0.5) < 0.01
    assert not np.array_equal(crop_draws(1, keys, (40, 44), 32)[0], y)        # seed matters
    u = keyed_uniforms(0, keys[:100])
    assert np.array_equal(u[7], keyed_uniforms(0, keys[7:8])[0])               # per key, not per batch
    assert np.corrcoef(u[:, 0], u[:, 2])[0, 1] ** 2 < 0.05


def test_crop_flip_methods_agree():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(-30000, 30000, (5, 2, 9, 11), generator=g, dtype=torch.int16)
    idx, y, x = torch.tensor([4, 0, 4]), torch.tensor([0, 3, 1]), torch.tensor([5, 0, 2])
    fl = torch.tensor([True, False, True])
    a = crop_flip(src, idx, y, x, fl, (6, 6), "take")
    b = crop_flip(src, idx, y, x, fl, (6, 6), "slices")
    assert a.dtype == torch.int16 and torch.equal(a, b)
    assert torch.equal(b[1], src[0, :, 3:9, 0:6]) and torch.equal(b[0], src[4, :, 0:6, 5:11].flip(-1))


@pytest.mark.parametrize("paired", [True, False])
def test_crop_window_read_equals_whole_slice_read(tiny_shards, paired):
    """Copying only the crop windows (flipped on the host, or on the device) gives exactly the
    batch that reading whole slices and cropping/flipping afterwards gives."""
    task = build_task(preset("tiny", "pix2pix").task)
    kw = dict(image_size=24, flip=True, seed=7, task=task, keys={"A", "B", "mask", "labels"})
    whole = SliceBatches(Shards(tiny_shards / "train"), crop_on_host=False, **kw)
    host = SliceBatches(Shards(tiny_shards / "train"), **kw)
    dev_flip = SliceBatches(Shards(tiny_shards / "train"), flip_on_host=False, **kw)
    assert host.crop_on_host and host.flip_on_host and not dev_flip.flip_on_host
    keys = next(InfiniteSampler(len(whole), paired=paired, seed=1).batches(64))
    y, x, fl = crop_draws(7, keys, whole.hw, 24)
    assert fl.any() and not fl.all() and len(set(y.tolist())) > 3 and len(set(x.tolist())) > 3
    want = whole(keys)
    hb = host.read(keys)
    assert hb["A"].shape[-2:] == (24, 24)   # only the windows were copied off the memory map
    for got in (host.finish(hb), dev_flip(keys)):
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_cpu_batches_reuse_buffers_only_when_released(tiny_shards):
    """On a CPU device the host buffers are the batch: a batch its consumer keeps is never
    overwritten by later ones; once released, its buffers are reused (no allocation per batch)."""
    task = build_task(preset("tiny", "pix2pix").task)
    sb = SliceBatches(Shards(tiny_shards / "train"), image_size=24, flip=True, seed=2, task=task)
    n = len(sb)
    want = [sb(k) for _, k in zip(range(8), InfiniteSampler(n, paired=False, seed=2).batches(4))]
    for workers in (0, 2):
        gen = prefetch(sb, InfiniteSampler(n, paired=False, seed=2).batches(4), batch_size=4,
                       workers=workers)
        held = [next(gen) for _ in range(8)]          # all kept: each must keep its values
        for got, ref in zip(held, want):
            assert torch.equal(got["A"], ref["A"]) and torch.equal(got["B"], ref["B"])
        assert len({b["A"].data_ptr() for b in held}) == 8
        del held
        ptrs = []
        for _ in range(3 * (workers + 2)):           # released at once: the ring's buffers
            ptrs.append(next(gen)["A"].data_ptr())
        gen.close()
        assert len(set(ptrs)) <= workers + 2, (workers, len(set(ptrs)))
