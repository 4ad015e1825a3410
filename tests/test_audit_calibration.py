"""The lesion audit's controlled edits on one phantom subject at the demo geometry (the full
calibration, many subjects and sizes, is bench/audit_calibration.py): a clean good output
passes, an erased true lesion is flagged removed, a pasted lesion is flagged invented."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from gan_core.data.phantom import TISSUES, generate_subject
from gan_core.eval.metrics import lesion_audit

SPACING = (3.0, 3.0, 5.0)
KW = dict(shape=(64, 64, 32), spacing=SPACING)


@pytest.fixture(scope="module")
def subject():
    """Subject 3 with lesions and its lesion-free twin (same head and CT noise: independent
    random streams), plus a good output's noise and blur."""
    s = generate_subject(3, lesion_prevalence=1.0, **KW)
    twin = generate_subject(3, lesion_prevalence=0.0, **KW)
    assert s.meta["has_lesion"] and not twin.meta["has_lesion"]
    outside = ~ndimage.binary_dilation(s.lesion > 0, iterations=2)
    assert np.array_equal(s.ct[outside], twin.ct[outside])
    noise = np.random.default_rng(0).normal(0, 10, s.ct.shape).astype(np.float32)
    good = lambda ct: (ndimage.gaussian_filter(ct, (0.6, 0.6, 0.3)) + noise).astype(np.float32)  # noqa: E731
    return s, twin, good


def audit(s, pred):
    return lesion_audit(s.ct, pred, s.lesion, s.mask, spacing=SPACING, labels=s.labels)


def test_clean_good_output_passes(subject):
    s, _, good = subject
    res = audit(s, good(s.ct))
    assert res["n_true"] >= 1 and res["n_evaluable"] == res["n_true"]
    assert res["passed"], res["lesions"]


def test_erased_lesion_is_flagged_removed(subject):
    s, twin, good = subject
    res = audit(s, good(twin.ct))
    assert res["n_removed"] == res["n_evaluable"] >= 1 and not res["passed"]
    assert all(e["status"] == "removed" for e in res["lesions"] if e["evaluable"])
    assert res["n_invented"] == 0


def test_pasted_lesion_is_flagged_invented_where_it_was_pasted(subject):
    s, _, good = subject
    wm = s.labels == TISSUES["white_matter"]
    depth = ndimage.distance_transform_edt(wm, sampling=SPACING)
    depth[ndimage.distance_transform_edt(s.lesion == 0, sampling=SPACING) < 25] = 0  # far from lesions
    centre = np.array(np.unravel_index(np.argmax(depth), depth.shape))
    grid = np.indices(s.ct.shape).transpose(1, 2, 3, 0) * np.asarray(SPACING)
    ball = (np.linalg.norm(grid - centre * np.asarray(SPACING), axis=-1) <= 8.0) & wm
    res = audit(s, good(s.ct + 50.0 * ball))
    assert res["n_invented"] >= 1 and not res["passed"]
    hits = [inv for inv in res["invented"]
            if np.linalg.norm((np.asarray(inv["centroid_voxel"]) - centre) * SPACING) < 10.0]
    assert hits and hits[0]["mean_diff_hu"] > 15.0
    assert all(e["status"] == "kept" for e in res["lesions"] if e["evaluable"])
