"""In-domain Fréchet distance (gan_core.eval.fid)."""

from __future__ import annotations

import numpy as np
import pytest

from gan_core.eval.fid import FeatureExtractor, fd_score, frechet_distance, statistics
from gan_core.eval.segment import load_slices

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the distance -------------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form_for_1d_and_diagonal_gaussians():
    # 1D: (mu1 - mu2)^2 + (sd1 - sd2)^2
    assert frechet_distance(np.array([1.0]), np.array([[9.0]]), np.array([-2.0]), np.array([[1.0]])) \
        == pytest.approx(9.0 + (3.0 - 1.0) ** 2)
    # diagonal: sum over dimensions of the 1D terms
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)
    # singular covariances (a dimension without variance) are fine
    assert frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([4.0, 0.0])) \
        == pytest.approx(1.0, abs=1e-6)


def test_frechet_distance_is_symmetric_zero_on_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((150, 5)) * 2.0 + 0.5
    sa, sb = statistics(a), statistics(b)
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-6)
    assert abs(frechet_distance(*sa, *sa)) < 1e-8
    shifts = [frechet_distance(*sa, *statistics(a + s)) for s in (0.5, 1.0, 2.0)]
    np.testing.assert_allclose(shifts, [5 * s ** 2 for s in (0.5, 1.0, 2.0)], rtol=1e-6)


def test_frechet_distance_handles_fewer_samples_than_dimensions():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 12)), rng.standard_normal((5, 12)) + 1.0
    fd = frechet_distance(*statistics(a), *statistics(b))
    assert np.isfinite(fd) and fd > 0


def test_frechet_distance_and_statistics_validate_shapes():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"\(2, 2\) covariances"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        statistics(np.zeros((1, 4)))


# -- the in-domain extractor --------------------------------------------------------------------

@pytest.fixture(scope="module")
def splits(tiny_shards):
    return {s: load_slices(tiny_shards / s, "ct", min_body_fraction=0.05) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def extractor(splits) -> FeatureExtractor:
    x, y, _ = splits["train"]
    return FeatureExtractor().fit(x, y, n_classes=10, steps=100, seed=0, widths=(8, 16, 32))


def test_features_are_pooled_bottleneck_vectors_scaled_to_the_training_spread(extractor, splits):
    x = splits["train"][0]
    f = extractor.features(x)
    assert f.shape == (x.shape[0], 32) and extractor.dim == 32 and f.dtype == np.float64
    assert np.sqrt(f.var(0).mean()) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match=r"expected \(N, 1, H, W\)"):
        extractor.features(x[:, 0])
    with pytest.raises(RuntimeError, match="fit"):
        FeatureExtractor().features(x)


def test_fd_of_a_set_with_itself_is_zero_and_it_grows_with_noise_and_shift(extractor, splits):
    real = splits["test"][0]
    assert abs(fd_score(extractor, real, real)) < 1e-3
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(real.shape).astype(np.float32)
    noisy = [fd_score(extractor, real, np.clip(real + s * noise, -1, 1)) for s in (0.05, 0.3, 1.0)]
    assert 0 < noisy[0] < noisy[1] < noisy[2]
    shifted = [fd_score(extractor, real, real + s) for s in (0.1, 0.4)]
    assert 0 < shifted[0] < shifted[1]


def test_fd_is_symmetric_and_real_vs_real_is_lower_than_real_vs_noise(extractor, splits):
    val, test = splits["val"][0], splits["test"][0]
    fd_rr = fd_score(extractor, val, test)
    assert fd_rr == pytest.approx(fd_score(extractor, test, val), rel=1e-5)
    noise = np.random.default_rng(1).uniform(-1, 1, size=test.shape).astype(np.float32)
    assert fd_rr > 0
    assert fd_score(extractor, test, noise) > 10 * fd_rr


def test_extractor_weights_round_trip_through_a_local_file(extractor, splits, tmp_path):
    path = tmp_path / "fd_encoder.pt"
    extractor.save(path)
    loaded = FeatureExtractor.load(path)
    assert loaded.feature_scale == extractor.feature_scale != 1.0
    x = splits["val"][0]
    np.testing.assert_array_equal(loaded.features(x), extractor.features(x))
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureExtractor.load(tmp_path / "missing.pt")
