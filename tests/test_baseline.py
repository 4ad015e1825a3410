"""Non-learned MR -> HU baseline (gan_core.eval.baseline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gan_core.eval.baseline import IntensityRegressionBaseline
from gan_core.data.normalize import mr_to_unit


def _hu_of(x: np.ndarray) -> np.ndarray:
    """A known monotone MR(unit) -> HU map spanning fat .. bone."""
    return 40.0 + 900.0 * x ** 3 + 100.0 * x


def _subject(rng: np.random.Generator, shape=(12, 16, 16)):
    raw = rng.gamma(4.0, 150.0, shape).astype(np.float32)          # raw MR intensities
    body = np.zeros(shape, bool)
    body[1:-1, 2:-2, 2:-2] = True
    mr = mr_to_unit(raw, body)
    ct = np.where(body, _hu_of(mr) + rng.normal(0, 5, shape), -1000.0).astype(np.float32)
    return mr, ct, body


@pytest.fixture()
def rng():
    return np.random.default_rng(7)


def test_fit_recovers_known_monotone_map(rng):
    train = [_subject(rng) for _ in range(3)]
    model = IntensityRegressionBaseline(n_bins=128).fit(iter(train))   # single-pass generator
    mr, ct, body = _subject(rng)
    pred = model.predict(mr, body)
    assert pred.dtype == np.float32 and pred.shape == mr.shape
    err = np.abs(pred[body] - _hu_of(mr[body]))
    assert float(err.mean()) < 5.0
    assert np.all(pred[~body] == -1000.0)
    assert model.n_subjects == 3 and int(model.counts.sum()) == 3 * int(body.sum())


def test_median_statistic_and_empty_bin_interpolation():
    mr = np.array([-0.375] * 4 + [0.625] * 4, np.float32)   # centres of bins 2 and 6 of 8
    ct = np.array([-500, -500, -500, 2000, 500, 500, 500, -1000], np.float32)
    body = np.ones_like(mr, bool)
    med = IntensityRegressionBaseline(n_bins=8, statistic="median").fit([(mr, ct, body)])
    mean = IntensityRegressionBaseline(n_bins=8, statistic="mean").fit([(mr, ct, body)])
    centres = med.bin_centres
    assert med.predict(np.float32([-0.375, 0.625]), None).tolist() == [-500.0, 500.0]
    assert mean.predict(np.float32([-0.375]), None)[0] == pytest.approx((3 * -500 + 2000) / 4)
    # only bins 2 and 6 are filled; bins in between are linear, ends copy their neighbour
    assert med.counts.tolist() == [0, 0, 4, 0, 0, 0, 4, 0]
    assert med.lut_hu[4] == pytest.approx(np.interp(centres[4], [centres[2], centres[6]], [-500, 500]))
    assert med.lut_hu[0] == -500.0 and med.lut_hu[7] == 500.0


def test_ct_clipped_to_project_range():
    mr = np.zeros(4, np.float32)
    model = IntensityRegressionBaseline(n_bins=4).fit([(mr, np.full(4, 9000.0), np.ones(4))])
    assert model.predict(mr, None)[0] == pytest.approx(3000.0)


def test_save_load_round_trip(tmp_path, rng):
    model = IntensityRegressionBaseline(n_bins=32, statistic="median", background_hu=-1024.0)
    model.fit([_subject(rng)])
    path = model.save(tmp_path / "sub" / "baseline.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["baseline.json"]  # no temp left
    loaded = IntensityRegressionBaseline.load(path)
    assert loaded.to_dict() == model.to_dict()
    mr, _, body = _subject(rng)
    np.testing.assert_array_equal(loaded.predict(mr, body), model.predict(mr, body))
    assert loaded.predict(mr, body)[~body].max() == -1024.0


def test_predict_before_fit_errors():
    model = IntensityRegressionBaseline()
    with pytest.raises(RuntimeError, match="before fit"):
        model.predict(np.zeros((2, 2), np.float32), None)
    with pytest.raises(RuntimeError, match="before fit"):
        model.to_dict()


def test_malformed_json_names_file_and_field(tmp_path, rng):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        IntensityRegressionBaseline.load(bad)
    good = IntensityRegressionBaseline(n_bins=8).fit([_subject(rng)]).to_dict()
    cases = {
        "lut_hu": good["lut_hu"][:-1],
        "counts": [-1] * 8,
        "n_bins": "eight",
        "statistic": "mode",
        "format": "something-else",
        "background_hu": None,
    }
    for field, value in cases.items():
        doc = dict(good, **{field: value})
        path = tmp_path / f"bad_{field}.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=rf"bad_{field}\.json: field '{field}'"):
            IntensityRegressionBaseline.load(path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: expected a JSON object"):
        IntensityRegressionBaseline.load(tmp_path / "list.json")


def test_fit_input_errors(rng):
    mr, ct, body = _subject(rng)
    with pytest.raises(ValueError, match="pair 1: shapes differ"):
        IntensityRegressionBaseline().fit([(mr, ct, body), (mr, ct[:-1], body)])
    with pytest.raises(ValueError, match="mr_to_unit"):
        IntensityRegressionBaseline().fit([(mr * 500.0, ct, body)])
    with pytest.raises(ValueError, match="no voxel inside any body mask"):
        IntensityRegressionBaseline().fit([(mr, ct, np.zeros_like(body))])
    with pytest.raises(ValueError, match="triple"):
        IntensityRegressionBaseline().fit([(mr, ct)])
    with pytest.raises(ValueError, match="n_bins"):
        IntensityRegressionBaseline(n_bins=1)
    with pytest.raises(ValueError, match="statistic"):
        IntensityRegressionBaseline(statistic="mode")
    model = IntensityRegressionBaseline().fit([(mr, ct, body)])
    with pytest.raises(ValueError, match="mask shape"):
        model.predict(mr, body[:-1])
