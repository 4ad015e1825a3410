"""Application tasks (k-space reconstruction, low-dose CT, through-plane super-resolution) and the
fastMRI metrics they are scored with."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gan_core.eval import metrics as M
from gan_core.data.normalize import unit_to_ct
from gan_core.data.shards import Shards, SliceDataset
from gan_core.tasks import available, build_task, task_config
from gan_core.tasks.base import to_magnitude
from gan_core.tasks.kspace import data_consistency, fft2c, ifft2c, kspace_mask
from gan_core.tasks.lowdose import estimate_noise_sigma, simulate_low_dose
from gan_core.tasks.superres import cubic_upsample, decimate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WHITE_MATTER = 7  # phantom tissue label (gan_core.data.phantom.TISSUES)


@pytest.fixture(scope="module")
def slabs(tiny_shards) -> list[dict[str, np.ndarray]]:
    """Every subject slab of the tiny phantom cohort (train + test shards)."""
    out = []
    for split in ("train", "test"):
        sh = Shards(tiny_shards / split)
        out += [sh.subject_slab(i) for i in range(len(sh.subjects))]
    return out


# ----------------------------------------------------------------------------- fastMRI metrics
def test_fastmri_metrics_equal_direct_skimage_calls():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (3, 16, 16)).astype(np.float32)
    gt[1] *= 0.3  # slices with different maxima: the range must be the volume's max
    pred = (gt + rng.normal(0, 0.05, gt.shape)).astype(np.float32)
    assert M.nmse(gt, pred) == pytest.approx(
        float(np.sum((gt.astype(np.float64) - pred) ** 2) / np.sum(gt.astype(np.float64) ** 2)),
        rel=1e-5)
    assert M.fastmri_psnr(gt, pred) == float(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))
    expected = np.mean([structural_similarity(gt[z], pred[z], data_range=gt.max())
                        for z in range(3)])
    per_slice_range = np.mean([structural_similarity(gt[z], pred[z], data_range=gt[z].max())
                               for z in range(3)])
    assert M.fastmri_ssim(gt, pred) == pytest.approx(expected, abs=1e-12)
    assert abs(expected - per_slice_range) > 1e-3  # the test can tell the two ranges apart
    assert M.fastmri_scores(gt, pred) == {"nmse": M.nmse(gt, pred),
                                          "psnr": M.fastmri_psnr(gt, pred),
                                          "ssim": M.fastmri_ssim(gt, pred)}


def test_fastmri_metrics_hand_computed():
    assert M.nmse(np.array([[3.0, 4.0]]), np.array([[3.0, 0.0]])) == pytest.approx(16 / 25)
    # mse 0.5, data range gt.max() = 2: 10 log10(4 / 0.5)
    assert M.fastmri_psnr(np.array([[0.0, 2.0]]), np.array([[0.0, 1.0]])) == pytest.approx(
        10 * np.log10(8.0))
    v = np.linspace(0.0, 1.0, 2 * 8 * 8).reshape(2, 8, 8)
    assert M.fastmri_scores(v, v) == {"nmse": 0.0, "psnr": float("inf"), "ssim": 1.0}
    assert M.fastmri_ssim(v, np.zeros_like(v)) < 0.1


@pytest.mark.parametrize("call, match", [
    (lambda: M.nmse(np.ones((2, 8, 8)), np.ones((2, 8, 7))), "shape"),
    (lambda: M.fastmri_ssim(np.ones((8, 8)), np.ones((8, 8))), "3 dimensions"),
    (lambda: M.fastmri_ssim(np.ones((2, 5, 5)), np.ones((2, 5, 5))), "7x7"),
    (lambda: M.fastmri_psnr(np.zeros((2, 8, 8)), np.ones((2, 8, 8))), "maximum must be > 0"),
    (lambda: M.nmse(np.ones(4), np.array([1.0, np.nan, 1.0, 1.0])), "non-finite"),
])
def test_fastmri_metrics_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- registry/dataset
@pytest.mark.parametrize("name", ["kspace", "lowdose", "superres"])
def test_slice_dataset_yields_unit_range_pairs(tiny_shards, name):
    assert name in available()
    task = build_task(task_config(name))
    ds = SliceDataset(tiny_shards / "train", task=task)
    sh = Shards(tiny_shards / "train")
    h, w = sh.index["inplane"]
    body = sh.arrays["mask"].reshape(len(ds), -1).mean(1)
    # body slices at odd depth (superres keeps the even ones unchanged)
    picks = [int(i) for i in np.flatnonzero(body > 0.2) if i % 2 == 1][:2]
    assert len(picks) == 2
    for key in (picks[0], (0, picks[1], picks[1])):
        s = ds[key]
        assert s["A"].shape == (1, h, w) and s["B"].shape == (1, h, w)
        for k in ("A", "B"):
            assert float(s[k].min()) >= -1.0 and float(s[k].max()) <= 1.0
        i = int(ds.slices[key if isinstance(key, int) else key[1]])
        assert np.array_equal(s["B"][0].numpy(), sh.arrays[task.target][i])  # target untouched
        assert not np.array_equal(s["A"][0].numpy(), s["B"][0].numpy())  # input is degraded
    again = SliceDataset(tiny_shards / "train", task=build_task(task_config(name)))
    key = (0, picks[1], picks[1])
    assert np.array_equal(ds[key]["A"], again[key]["A"])  # reproducible


def test_kspace_dataset_draws_a_fresh_mask_per_sample(tiny_shards):
    ds = SliceDataset(tiny_shards / "train", task=build_task(task_config("kspace")))
    i = int(np.argmax(ds.shards.arrays["mask"].reshape(len(ds), -1).mean(1)))
    a = [ds[(e, i, i)]["A"].numpy() for e in range(4)]
    assert sum(not np.array_equal(a[0], x) for x in a[1:]) >= 2


# ----------------------------------------------------------------------------- k-space masks
@pytest.mark.parametrize("width, acc, cf", [(320, 4, 0.08), (368, 8, 0.04), (40, 4, 0.08)])
def test_random_mask_matches_fastmri_semantics(width, acc, cf):
    n_low = int(round(width * cf))
    pad = (width - n_low + 1) // 2
    masks = np.stack([kspace_mask(width, acc, cf, "random", np.random.default_rng(s))
                      for s in range(1500)])
    assert masks.dtype == bool and masks.shape == (1500, width)
    assert masks[:, pad:pad + n_low].all()  # centre always sampled
    assert masks[:, width // 2].all()  # ... including the centred FFT's DC column
    assert masks.sum(1).mean() == pytest.approx(width / acc, rel=0.02)
    outer = np.r_[0:pad, pad + n_low:width]
    prob = (width / acc - n_low) / (width - n_low)
    assert masks[:, outer].mean() == pytest.approx(prob, rel=0.03)
    assert len({m.tobytes() for m in masks[:50]}) == 50  # random: fresh masks


@pytest.mark.parametrize("width, acc, cf", [(320, 4, 0.08), (368, 8, 0.04), (40, 4, 0.08)])
def test_equispaced_mask_matches_fastmri_semantics(width, acc, cf):
    n_low = int(round(width * cf))
    pad = (width - n_low + 1) // 2
    centre = np.zeros(width, bool)
    centre[pad:pad + n_low] = True
    adjusted = acc * (n_low - width) / (n_low * acc - width)
    offsets = set()
    for s in range(60):
        m = kspace_mask(width, acc, cf, "equispaced", np.random.default_rng(s))
        offset = int(np.flatnonzero(m)[0])  # fastMRI's offset < round(adjusted) < pad
        offsets.add(offset)
        expected = centre.copy()
        expected[np.around(np.arange(offset, width - 1, adjusted)).astype(int)] = True
        assert np.array_equal(m, expected)
        assert abs(int(m.sum()) - width / acc) <= 1
    assert offsets == set(range(round(adjusted)))  # every fastMRI offset occurs
    if (width, acc, cf) == (320, 4, 0.08):  # 26 centre lines, spacing 5.44: 80 lines, any offset
        assert all(kspace_mask(320, 4, 0.08, "equispaced", np.random.default_rng(s)).sum() == 80
                   for s in range(20))


def test_mask_is_deterministic_given_rng_and_full_at_acceleration_one():
    for kind in ("random", "equispaced"):
        a = kspace_mask(64, 4, 0.08, kind, np.random.default_rng(7))
        b = kspace_mask(64, 4, 0.08, kind, np.random.default_rng(7))
        assert np.array_equal(a, b)
        assert kspace_mask(64, 1, 0.08, kind, np.random.default_rng(0)).all()


@pytest.mark.parametrize("acc, cf, kind, match", [
    (0, 0.08, "random", "task.acceleration"),
    (2.5, 0.08, "random", "task.acceleration"),
    (True, 0.08, "random", "task.acceleration"),
    ("4", 0.08, "random", "task.acceleration"),
    (4, 0.0, "random", "task.center_fraction"),
    (4, 1.0, "equispaced", "task.center_fraction"),
    (4, 0.08, "poisson", "task.mask"),
    (16, 0.2, "equispaced", "already exceed"),
])
def test_mask_rejects_bad_parameters(acc, cf, kind, match):
    with pytest.raises(ValueError, match=match):
        kspace_mask(64, acc, cf, kind, np.random.default_rng(0))


def test_kspace_task_validates_config():
    with pytest.raises(ValueError, match="task.acceleration"):
        build_task(task_config("kspace", acceleration=0))
    with pytest.raises(ValueError, match="task.mask"):
        build_task(task_config("kspace", mask="radial"))


# ----------------------------------------------------------------------------- k-space task
def test_fft_is_orthonormal_and_centred():
    x = np.random.default_rng(0).uniform(size=(2, 8, 10))
    k = fft2c(x)
    assert np.allclose(ifft2c(k), x)
    assert np.isclose(np.sum(np.abs(k) ** 2), np.sum(x ** 2))  # Parseval
    assert np.allclose(k[:, 4, 5], x.sum((1, 2)) / np.sqrt(80))  # DC at the centre


@pytest.mark.parametrize("acc, cf", [(4, 0.08), (8, 0.04)])
def test_zero_filled_input_and_aux(slabs, acc, cf):
    task = build_task(task_config("kspace", acceleration=acc, center_fraction=cf))
    slab = slabs[0]
    deg = task.degrade(slab, np.random.default_rng(1))
    assert deg.image.shape == (1, *slab["mr"].shape) and deg.image.dtype == np.float32
    mask, measured = deg.aux["mask"], deg.aux["kspace"]
    assert mask.shape == (slab["mr"].shape[-1],)
    assert np.all(measured[..., ~mask] == 0)
    assert np.allclose(measured[..., mask], fft2c(to_magnitude(slab["mr"]))[..., mask], atol=1e-5)
    assert np.allclose(to_magnitude(deg.image[0]),
                       np.clip(np.abs(ifft2c(measured)), 0, 1), atol=1e-6)
    gt = to_magnitude(slab["mr"])
    assert M.nmse(gt, to_magnitude(deg.image[0])) > 0.02  # aliasing: differs from the truth
    assert np.array_equal(task.baseline(deg, slab), deg.image[0])  # baseline = zero-filled
    assert set(task.metrics(deg.image[0], slab)) == {"nmse", "psnr", "ssim"}


def test_fully_sampled_returns_the_image(slabs):
    task = build_task(task_config("kspace", acceleration=1))
    slab = slabs[1]
    deg = task.degrade(slab, np.random.default_rng(0))
    assert deg.aux["mask"].all()
    assert np.allclose(deg.image[0], slab["mr"], atol=1e-5)


@pytest.mark.parametrize("width", [40, 41])  # even and odd: the Hermitian mirror differs
def test_data_consistency_is_exact_idempotent_and_never_hurts(slabs, width):
    task = build_task(task_config("kspace"))
    rng = np.random.default_rng(3)
    for slab in slabs[:3]:
        mr = slab["mr"] if width == 40 else np.pad(slab["mr"], ((0, 0), (0, 1), (0, 1)),
                                                   constant_values=-1.0)
        gt = to_magnitude(mr)
        deg = task.degrade({"mr": mr}, rng)
        mask, measured = deg.aux["mask"], deg.aux["kspace"]
        predictions = {
            "zero-filled": to_magnitude(deg.image[0]),
            "blurred": ndimage.gaussian_filter(gt, (0, 1.0, 1.0)),
            "noisy": gt + rng.normal(0, 0.1, gt.shape),
            "zeros": np.zeros_like(gt),
        }
        for name, pred in predictions.items():
            y = data_consistency(pred, mask, measured)
            assert np.allclose(fft2c(y)[..., mask], measured[..., mask], atol=1e-5), name
            assert np.allclose(data_consistency(y, mask, measured), y, atol=1e-6), name
            assert M.nmse(gt, y) <= M.nmse(gt, pred) + 1e-9, name
            post = to_magnitude(task.postprocess(pred * 2 - 1, deg))
            assert post.min() >= 0 and post.max() <= 1
            assert M.nmse(gt, post) <= M.nmse(gt, y) + 1e-6, name  # clipping never hurts either
        assert np.allclose(task.postprocess(mr, deg), mr, atol=1e-5)  # the truth is kept


def test_data_consistency_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mask shape"):
        data_consistency(np.zeros((1, 8, 8)), np.ones(7, bool), np.zeros((1, 8, 8), complex))
    with pytest.raises(ValueError, match="image shape"):
        data_consistency(np.zeros((1, 8, 9)), np.ones(8, bool), np.zeros((1, 8, 8), complex))


# ----------------------------------------------------------------------------- low-dose CT
def _lowdose_hu(slab, rng_seed=0, **cfg):
    task = build_task(task_config("lowdose", **cfg))
    return unit_to_ct(task.degrade(slab, np.random.default_rng(rng_seed)).image[0]), task


def test_lowdose_is_deterministic_per_seed(slabs):
    a, _ = _lowdose_hu(slabs[0], 5)
    b, _ = _lowdose_hu(slabs[0], 5)
    c, _ = _lowdose_hu(slabs[0], 6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_lowdose_noise_grows_as_dose_falls(slabs):
    slab = slabs[0]
    hu = unit_to_ct(slab["ct"])
    wm = slab["labels"] == WHITE_MATTER
    assert wm.sum() > 100
    stds = [float((_lowdose_hu(slab, dose=d)[0] - hu)[wm].std()) for d in (1.0, 0.25, 0.05)]
    assert stds[0] > 1.0  # full dose at 1e5 photons is not noise-free
    assert stds[0] < stds[1] < stds[2]
    assert stds[2] > 1.8 * stds[0]  # noise ~ 1/sqrt(dose): 4.5x here, leave room


def test_lowdose_with_unlimited_photons_is_the_original(slabs):
    slab = slabs[1]
    low, task = _lowdose_hu(slab, dose=1.0, photons=1e12)
    assert M.mae(unit_to_ct(slab["ct"]), low, slab["mask"]) < 1.0
    assert task.metrics(slab["ct"], slab)["mae"] == 0.0


def test_lowdose_baselines_reduce_error(slabs):
    # over the cohort: on a single low-noise 6 mm subject TV's fixed weight can over-smooth (one of
    # the tiny cohort's subjects: MAE 14.8 -> 15.0 HU), which is TV's known bias, not a defect
    for method in ("nlm", "tv"):
        noisy, denoised = [], []
        for slab in slabs:
            task = build_task(task_config("lowdose"))
            if method == "tv":
                task = type(task)(task.cfg, baseline_filter="tv")
            deg = task.degrade(slab, np.random.default_rng(0))
            base = task.baseline(deg, slab)
            assert base.shape == slab["ct"].shape and base.dtype == np.float32
            noisy.append(task.metrics(deg.image[0], slab))
            denoised.append(task.metrics(base, slab))
        for key, better in (("mae", np.less), ("psnr", np.greater)):
            assert better(np.mean([m[key] for m in denoised]), np.mean([m[key] for m in noisy])), (method, key)
        if method == "nlm":  # NLM adapts to each subject's noise: better on every one
            assert all(d["mae"] < n["mae"] for d, n in zip(denoised, noisy))


def test_lowdose_is_fast_and_handles_non_square_slices():
    hu = np.full((16, 40, 40), -1000.0)
    hu[:, 8:32, 8:32] = 40.0
    t0 = time.perf_counter()
    simulate_low_dose(hu, dose=0.25, photons=1e5, pixel_mm=6.4, rng=np.random.default_rng(0))
    assert time.perf_counter() - t0 < 3.0  # ~0.05 s here; generous for a loaded 2-core box
    rect = simulate_low_dose(hu[:2, :, 4:34], dose=0.25, photons=1e5, pixel_mm=6.4,
                             rng=np.random.default_rng(0))
    assert rect.shape == (2, 40, 30)
    assert abs(float(np.median(rect[:, 15:25, 10:20])) - 40.0) < 15.0  # unbiased inside


def test_noise_sigma_estimate():
    rng = np.random.default_rng(0)
    assert estimate_noise_sigma(rng.normal(0, 2.0, (128, 128))) == pytest.approx(2.0, rel=0.05)
    flat = np.zeros((32, 32))
    flat[:, 16:] = 10.0  # an edge alone is no noise
    assert estimate_noise_sigma(flat) == 0.0


@pytest.mark.parametrize("cfg, match", [
    ({"dose": 0.0}, "task.dose"), ({"dose": 1.5}, "task.dose"),
    ({"photons": -1.0}, "task.photons"), ({"photons": float("inf")}, "task.photons"),
])
def test_lowdose_validates_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_task(task_config("lowdose", **cfg))


def test_lowdose_rejects_unknown_filter():
    task = build_task(task_config("lowdose"))
    with pytest.raises(ValueError, match="baseline_filter"):
        type(task)(task.cfg, baseline_filter="median")


# ----------------------------------------------------------------------------- super-resolution
def test_superres_keeps_slices_and_shape(slabs):
    for factor in (2, 3):
        task = build_task(task_config("superres", factor=factor))
        slab = slabs[0]
        deg = task.degrade(slab, np.random.default_rng(0))
        assert deg.image.shape == (1, *slab["mr"].shape) and deg.image.dtype == np.float32
        assert np.array_equal(deg.image[0, ::factor], slab["mr"][::factor])
        assert not np.allclose(deg.image[0], slab["mr"])
        assert np.array_equal(task.baseline(deg, slab), deg.image[0])


@pytest.mark.parametrize("depth, factor", [(9, 2), (13, 3), (12, 4)])
def test_cubic_interpolation_reproduces_polynomials(depth, factor):
    z = np.arange(depth, dtype=np.float64)[:, None, None]
    rng = np.random.default_rng(depth)
    a, b = rng.uniform(-0.5, 0.5, (2, 1, 3, 3))
    linear = a + b * z / depth
    low, pos = decimate(linear, factor)
    last = int(pos[-1])
    up = cubic_upsample(low, pos, depth)
    assert np.allclose(up[:last + 1], linear[:last + 1], atol=1e-6)
    assert np.allclose(up[last + 1:], linear[last])  # past the last kept slice: held
    cubic = 0.3 * (z / depth) ** 3 - 0.2 * z / depth + a
    low, pos = decimate(cubic, factor)
    if len(pos) >= 4:
        assert np.allclose(cubic_upsample(low, pos, depth)[:last + 1], cubic[:last + 1], atol=1e-6)


def test_thick_slices_average_and_sit_at_their_centre():
    v = np.random.default_rng(0).uniform(size=(8, 4, 4))
    low, pos = decimate(v, 2, thick=True)
    assert np.allclose(low, (v[0::2] + v[1::2]) / 2)
    assert np.array_equal(pos, [0.5, 2.5, 4.5, 6.5])
    z = np.arange(8.0)[:, None, None] * np.ones((1, 4, 4))
    assert np.allclose(cubic_upsample(*decimate(z, 2, thick=True), 8)[1:7], z[1:7], atol=1e-6)


def test_superres_short_slabs():
    task = build_task(task_config("superres"))
    one = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    assert np.array_equal(task.degrade({"mr": one}, None).image[0], one)
    two = np.stack([one[0], -one[0]])
    assert np.array_equal(task.degrade({"mr": two}, None).image[0], np.stack([one[0], one[0]]))


def test_superres_baseline_between_truth_and_nearest_neighbour(slabs):
    for factor in (2, 3):
        task = build_task(task_config("superres", factor=factor))
        for slab in slabs:
            deg = task.degrade(slab, None)
            depth = slab["mr"].shape[0]
            nearest = np.minimum(np.floor(np.arange(depth) / factor + 0.5).astype(int) * factor,
                                 (depth - 1) // factor * factor)
            base = task.metrics(task.baseline(deg, slab), slab)
            nn = task.metrics(slab["mr"][nearest], slab)
            truth = task.metrics(slab["mr"], slab)
            assert truth == {"nmse": 0.0, "psnr": float("inf"), "ssim": 1.0}
            assert 0 < base["nmse"] < nn["nmse"]
            assert nn["psnr"] < base["psnr"] < truth["psnr"]
            assert base["ssim"] < 1.0  # (SSIM vs nearest: either way on noisy phantoms)


@pytest.mark.parametrize("factor", [1, 0, 2.5, True, "2"])
def test_superres_validates_factor(factor):
    with pytest.raises(ValueError, match="task.factor"):
        build_task(task_config("superres", factor=factor))
