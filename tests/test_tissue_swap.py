"""The tissue-swap gate (gan_core.eval.tissue): per-tissue HU error against the phantom's labels,
permutations flagged, the baseline's blends not; a really swapped model is evaluated for real and
the register step (real `mlflow server`) never promotes it, even with require_audit=False."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gan_core.data.normalize import mr_to_unit
from gan_core.data.phantom import TISSUES, generate_subject
from gan_core.eval.baseline import IntensityRegressionBaseline
from gan_core.eval.tissue import TISSUE_LABELS, tissue_report, tissue_verdict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def head():
    return generate_subject(7, shape=(48, 48, 20), spacing=(4.0, 4.0, 7.0), lesion_prevalence=0.0)


def test_labels_are_the_phantoms():
    assert TISSUE_LABELS == TISSUES


def test_true_ct_passes_and_reports_per_tissue_error(head):
    r = tissue_report(head.ct, head.ct, head.labels, head.mask)
    assert r["flagged"] is False and r["swaps"] == []
    assert {"fat", "cortical_bone", "marrow", "csf", "grey_matter", "white_matter"} <= set(r["tissues"])
    assert not r["tissues"]["eye"]["judged"]  # reported, not judged
    assert all(t["error_hu"] == 0.0 and t["nearest"] == name
               for name, t in r["tissues"].items() if t["judged"]
               and name not in ("air", "sinus_air"))  # air and sinus air share a reference
    assert "air" not in r["tissues"]  # outside the body mask


def test_monotone_mr_map_is_flagged_and_hu_permutation_too(head):
    mono = -400.0 + 1300.0 * (mr_to_unit(head.mr, head.mask) + 1.0) / 2.0  # the CycleGAN failure
    r = tissue_report(head.ct, mono, head.labels, head.mask)
    assert r["flagged"] and ["cortical_bone", "fat"] in [sorted(s["tissues"]) for s in r["swaps"]]
    permuted = head.ct.copy()  # fat and marrow exchange their HU, everything else exact
    fat, marrow = head.labels == TISSUES["fat"], head.labels == TISSUES["marrow"]
    permuted[fat], permuted[marrow] = head.ct[marrow].mean(), head.ct[fat].mean()
    r2 = tissue_report(head.ct, permuted, head.labels, head.mask)
    assert [s["tissues"] for s in r2["swaps"]] == [["fat", "marrow"]]
    assert r2["swaps"][0]["reversed_fraction"] == pytest.approx(1.0, abs=0.05)


def test_the_baselines_blend_of_dark_tissues_is_not_a_swap(head):
    train = [generate_subject(s, shape=(48, 48, 20), spacing=(4.0, 4.0, 7.0)) for s in (1, 2, 3)]
    base = IntensityRegressionBaseline().fit((mr_to_unit(s.mr, s.mask), s.ct, s.mask) for s in train)
    pred = base.predict(mr_to_unit(head.mr, head.mask), head.mask)
    r = tissue_report(head.ct, pred, head.labels, head.mask)
    assert r["flagged"] is False, r["swaps"]
    # yet it misses cortical bone by hundreds of HU (bone is dark on T1, like air): MAE charges that
    assert r["tissues"]["cortical_bone"]["error_hu"] < -200


def test_verdict_flags_passes_or_says_not_evaluable(head):
    ok = tissue_report(head.ct, head.ct, head.labels, head.mask)
    mono = tissue_report(head.ct, mr_to_unit(head.mr, head.mask) * 1000.0, head.labels, head.mask)
    assert tissue_verdict([("a", ok), ("b", None)])["status"] == "passed"
    v = tissue_verdict([("a", ok), ("b", mono)])
    assert v["status"] == "flagged" and v["flagged_subjects"] == ["b"] and "fat" in v["reason"]
    none = tissue_verdict([("a", None), ("b", None)])
    assert none["status"] == "not evaluable" and none["flagged"] is False and "NOT checked" in none["reason"]
    with pytest.raises(ValueError, match="same shape"):
        tissue_report(head.ct, head.ct[:-1], head.labels)


# ----------------------------------------------------------------------------- register blocks it
def test_swapped_model_is_flagged_by_the_evaluation_and_never_promoted(tiny_cohort, tiny_shards, server,
                                                                        tmp_path: Path):
    """A residual generator before it learns anything outputs its MR input as the CT (MR's
    intensity order: fat bright, bone dark, as the diagnosed CycleGAN): a real model file,
    evaluated for real, registered for real."""
    from components.evaluate import run_evaluate
    from components.register import run_register
    from tests.mlflow_server import preprocess_output, train_output

    data = preprocess_output(tiny_cohort, tiny_shards, tmp_path / "processed")
    model, _ = train_output(tiny_shards, tmp_path / "swapped", server, steps=2,
                            overrides={"model.residual": True, "optim.lr": 1e-6})
    ev = run_evaluate(str(data), str(model), str(tmp_path / "eval"), tracking_uri=server, figures=0)
    audit = ev["outputs"]["audit"]
    assert audit["tissue_swap_status"] == "flagged" and ev["outputs"]["audit_passed"] is False
    report_path = tmp_path / "eval" / "metrics.json"
    import json

    report = json.loads(report_path.read_text())
    assert report["audit"]["baseline"]["tissue_swap_status"] == "passed"  # the baseline is not swapped

    name = "medgan-sct-swapped"
    out = run_register(str(model), str(tmp_path / "eval"), model_name=name, tracking_uri=server,
                       require_audit=False)["outputs"]
    assert out["created"] and not out["promoted"] and out["tissue_swap"] == "flagged"
    assert "tissue-swap gate flagged" in out["reason"] and "whatever its test MAE" in out["reason"]
    client = MlflowClient(tracking_uri=server)
    mv = client.get_model_version(name, out["version"])
    assert mv.tags["tissue_swap"] == "flagged" and mv.tags["alias_decision"] == out["reason"]
    assert "Tissue-swap gate: flagged" in mv.description
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "champion")
