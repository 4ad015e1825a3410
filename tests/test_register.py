"""components.register (+ the pyfunc model) against a real `mlflow server`, real tiny models and
real evaluations: idempotent registration, champion alias moves only for a better, audited model,
and the champion loads through `models:/name@champion` and writes a synthetic CT NIfTI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.evaluate import run_evaluate
from components.pyfunc_model import SyntheticCTModel, decode_nifti
from components.register import main, run_register
from components.registry_policy import INTENDED_USE, decide_promotion
from components.step import StepInputError
from tests.mlflow_server import preprocess_output, train_output


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tiny_cohort: Path, tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return preprocess_output(tiny_cohort, tiny_shards, tmp_path_factory.mktemp("reg-data") / "processed")


@pytest.fixture(scope="module")
def models(data: Path, tiny_shards: Path, server: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Three real tiny models (different length/seed), each evaluated for real; sorted by test MAE."""
    root = tmp_path_factory.mktemp("reg-models")
    out = []
    for i, (steps, seed) in enumerate(((4, 0), (8, 1), (12, 2))):
        model_dir, run_id = train_output(tiny_shards, root / f"train{i}", server, steps=steps, seed=seed)
        ev = run_evaluate(str(data), str(model_dir), str(root / f"eval{i}"), tracking_uri=server, figures=0)
        out.append({"model": str(model_dir), "eval": str(root / f"eval{i}"), "run_id": run_id,
                    "mae": ev["outputs"]["aggregate"]["model"]["mae"], "audit_passed": ev["outputs"]["audit_passed"]})
    out.sort(key=lambda m: m["mae"])
    assert len({m["mae"] for m in out}) == 3, "the three models must differ in test MAE"
    return out


def test_promotion_rule():
    assert decide_promotion(90.0, True, None) == (True, "no champion yet; test MAE 90.00 HU and the audit passed")
    assert decide_promotion(90.0, True, {"version": "2", "mae": 100.0})[0] is True
    assert decide_promotion(100.0, True, {"version": "2", "mae": 100.0})[0] is False  # ties keep the champion
    worse = decide_promotion(110.0, True, {"version": "2", "mae": 100.0})
    assert worse[0] is False and worse[1].startswith("test MAE 110.00 HU does not beat champion v2")
    assert decide_promotion(10.0, False, {"version": "2", "mae": 100.0}) == (
        False, "lesion hallucination audit failed: not promoted")
    assert decide_promotion(10.0, False, {"version": "2", "mae": 100.0}, require_audit=False)[0] is True
    assert decide_promotion(float("nan"), True, None)[0] is False
    assert decide_promotion(10.0, True, {"version": "2", "mae": None})[0] is False
    # the non-learned baseline on the same subjects: strictly below it, or not promoted
    assert decide_promotion(90.0, True, None, baseline_mae=100.0) == (
        True, "no champion yet; test MAE 90.00 HU and beats the baseline (100.00 HU), the audit passed")
    at = decide_promotion(100.0, True, None, baseline_mae=100.0)
    assert at[0] is False and "does not beat the non-learned baseline (100.00 HU" in at[1]
    assert decide_promotion(90.0, True, {"version": "2", "mae": 95.0}, baseline_mae=80.0)[0] is False
    waived = decide_promotion(90.0, True, {"version": "2", "mae": 95.0}, baseline_mae=80.0,
                              require_baseline=False)
    assert waived[0] is True and "does not beat the baseline (80.00 HU; not required)" in waived[1]
    assert decide_promotion(90.0, True, None, baseline_mae=None)[0] is True  # no baseline: no gate
    assert decide_promotion(90.0, True, None, baseline_mae=float("nan"))[0] is True


def test_register_is_idempotent_and_the_alias_follows_the_best_mae(models, data, server):
    best, mid, worst = models
    client = MlflowClient(tracking_uri=server)
    name = "medgan-sct-mae"
    # phantom-trained tiny models neither pass the lesion audit nor beat the baseline: MAE
    # ordering alone decides here
    kw = dict(model_name=name, tracking_uri=server, require_audit=False, require_baseline=False)

    first = run_register(mid["model"], mid["eval"], data_manifest_uri=str(data), **kw)["outputs"]
    assert first["created"] and first["promoted"] and first["version"] == "1"
    assert first["previous_champion"] is None
    again = run_register(mid["model"], mid["eval"], **kw)["outputs"]
    assert (again["created"], again["version"], again["alias_moved"]) == (False, "1", False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    mv = client.get_model_version(name, "1")
    assert mv.run_id == mid["run_id"]
    assert mv.tags["intended_use"] == INTENDED_USE == "research use only — not for clinical use"
    assert mv.tags["data_manifest_sha256"] == hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()
    assert mv.tags["model_sha256"] == hashlib.sha256((Path(mid["model"]) / "model.pt").read_bytes()).hexdigest()
    assert float(mv.tags["test_mae_hu"]) == mid["mae"]
    assert float(mv.tags["baseline_mae_hu"]) > 0 and mv.tags["framework"] == "pix2pix"
    assert mv.tags["audit_passed"] == str(mid["audit_passed"]).lower() and mv.tags["code_version"]
    assert "research use only" in mv.description and "MAE" in mv.description

    better = run_register(best["model"], best["eval"], **kw)["outputs"]
    assert better["created"] and better["promoted"] and better["version"] == "2"
    test_set = f"{mv.tags['data_manifest_sha256']}:test"
    assert better["previous_champion"] == {"version": "1", "mae": mid["mae"], "test_set": test_set}
    assert better["champion"] == {"version": "2", "mae": best["mae"]} and better["test_set"] == test_set
    assert client.get_model_version_by_alias(name, "champion").version == "2"

    worse = run_register(worst["model"], worst["eval"], **kw)["outputs"]
    assert worse["created"] and not worse["promoted"] and worse["version"] == "3"
    assert "does not beat champion v2" in worse["reason"]
    assert client.get_model_version(name, "3").tags["alias_decision"] == worse["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert len(client.search_model_versions(f"name = '{name}'")) == 3


def test_failed_audit_is_never_promoted(models, server):
    best, _, worst = models
    assert not best["audit_passed"], "precondition: a tiny phantom model fails the lesion audit"
    client = MlflowClient(tracking_uri=server)
    name = "medgan-sct-audit"
    none_yet = run_register(best["model"], best["eval"], model_name=name, tracking_uri=server)["outputs"]
    assert none_yet["created"] and not none_yet["promoted"] and "audit failed" in none_yet["reason"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "champion")
    # a champion exists (set without the audit), a lower-MAE candidate that fails the audit stays out
    run_register(worst["model"], worst["eval"], model_name=name, tracking_uri=server, require_audit=False,
                 require_baseline=False)
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    again = run_register(best["model"], best["eval"], model_name=name, tracking_uri=server)["outputs"]
    assert (again["version"], again["created"], again["promoted"]) == ("1", False, False)
    assert client.get_model_version_by_alias(name, "champion").version == "2"


def test_a_model_worse_than_the_baseline_is_registered_not_promoted(models, server):
    """A real tiny model whose test MAE is above the non-learned baseline's: registered with its
    card (beats_baseline=false), never champion by default, and the description says so;
    ``require_baseline=False`` (a research choice, recorded) lets it take the alias."""
    best = models[0]
    ev = json.loads((Path(best["eval"]) / "manifest.json").read_text())
    baseline = ev["outputs"]["aggregate"]["baseline"]["mae"]
    assert best["mae"] > baseline, "precondition: a 12-step phantom model is worse than the baseline"
    client = MlflowClient(tracking_uri=server)
    name = "medgan-sct-baseline"
    out = run_register(best["model"], best["eval"], model_name=name, tracking_uri=server,
                       require_audit=False)["outputs"]
    assert out["created"] and not out["promoted"] and out["beats_baseline"] == "false"
    assert out["reason"] == (f"test MAE {best['mae']:.2f} HU does not beat the non-learned baseline "
                             f"({baseline:.2f} HU on the same subjects)")
    mv = client.get_model_version(name, out["version"])
    assert (mv.tags["beats_baseline"], mv.tags["baseline_required"]) == ("false", "true")
    assert "the model does NOT beat it; beating it is required for promotion" in mv.description
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "champion")
    waived = run_register(best["model"], best["eval"], model_name=f"{name}-waived", tracking_uri=server,
                          require_audit=False, require_baseline=False)["outputs"]
    assert waived["promoted"] and "does not beat the baseline" in waived["reason"]
    assert client.get_model_version(f"{name}-waived", "1").tags["baseline_required"] == "false"


def test_champion_loads_and_writes_a_synthetic_ct(models, data, server, tmp_path, monkeypatch):
    from gan_core.data.nifti import load_volume
    from gan_core.engine import translate_file

    best = models[0]
    name = "medgan-sct-serve"
    reg = run_register(best["model"], best["eval"], model_name=name, tracking_uri=server, require_audit=False,
                       require_baseline=False)
    assert reg["outputs"]["promoted"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.metadata.get_input_schema().input_names() == ["path", "mr_nifti_b64", "mask_path", "output_path"]

    # the logged input example is self-contained (no path into a deleted temp dir) and predicts
    example = model.input_example
    assert list(example.columns) == ["mr_nifti_b64"] and len(example) == 1
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl")))
    assert mlflow.models.Model.load(local / "MLmodel").load_input_example(str(local)).equals(example)
    assert "medgan-pyfunc-" not in (local / "input_example.json").read_text()
    res = model.predict(example)
    assert res.loc[0, "path"] == "" and res.loc[0, "output_path"] == "" and res.loc[0, "shape"] == "16x16x16"
    decode_nifti(example.loc[0, "mr_nifti_b64"], tmp_path, "example_mr")
    sct_file = decode_nifti(res.loc[0, "sct_nifti_b64"], tmp_path, "example_sct")
    ref = SyntheticCTModel.from_file(Path(best["model"]) / "model.pt", device="cpu").predict(
        None, pd.DataFrame({"path": [str(tmp_path / "example_mr.nii.gz")]}))
    np.testing.assert_array_equal(load_volume(sct_file, dtype=np.int16).array,
                                  load_volume(ref.loc[0, "output_path"], dtype=np.int16).array)
    with pytest.raises(Exception, match="exactly one of 'path'"):
        model.predict(pd.DataFrame({"path": ["x.nii.gz"], "mr_nifti_b64": [example.loc[0, "mr_nifti_b64"]]}))

    sid = json.loads((data / "manifest.json").read_text())["splits"]["test"][0]
    subj = tmp_path / sid
    shutil.copytree(data / "subjects" / sid, subj)
    mr = subj / "mr.nii.gz"
    res = model.predict(pd.DataFrame({"path": [str(mr)], "mask_path": [str(subj / "mask.nii.gz")]}),
                        params={"output_dir": str(tmp_path / "out")})
    out = Path(res.loc[0, "output_path"])
    assert out == tmp_path / "out" / f"{sid}_mr_sct.nii.gz" and out.is_file()
    sct, mr_vol = load_volume(out, dtype=np.int16), load_volume(mr)
    assert sct.array.dtype == np.int16 and sct.array.shape == mr_vol.array.shape
    np.testing.assert_allclose(sct.affine, mr_vol.affine)
    mask = load_volume(subj / "mask.nii.gz").array > 0
    assert (sct.array[~mask] == -1000).all() and sct.array[mask].min() >= -1024 and sct.array[mask].max() <= 3000
    assert res.loc[0, "body_voxels"] == int(mask.sum()) and res.loc[0, "shape"] == "x".join(map(str, mr_vol.shape))
    # the served model is exactly the champion's model.pt
    ref = load_volume(translate_file(Path(best["model"]) / "model.pt", mr, tmp_path / "ref.nii.gz",
                                     mask_path=subj / "mask.nii.gz"), dtype=np.int16)
    np.testing.assert_array_equal(sct.array, ref.array)
    # default output location (next to the MR), no mask column
    res2 = model.predict(pd.DataFrame({"path": [str(mr)]}))
    assert res2.loc[0, "output_path"] == str(subj / "mr_sct.nii.gz") and (subj / "mr_sct.nii.gz").is_file()
    # the array path: a 3D MR volume in, a HU volume out
    hu = model.unwrap_python_model().predict(None, mr_vol.array)
    assert hu.shape == mr_vol.shape and hu.dtype == np.float32 and hu.min() >= -1024
    with pytest.raises(ValueError, match="no 'path' column"):
        model.unwrap_python_model().predict(None, pd.DataFrame({"file": ["x"]}))
    with pytest.raises(Exception, match="missing.nii.gz"):
        model.predict(pd.DataFrame({"path": [str(tmp_path / "missing.nii.gz")]}))


def test_register_rejects_mismatched_inputs(models, server, tmp_path, monkeypatch, capsys):
    best, mid, _ = models
    with pytest.raises(StepInputError, match=r"field 'inputs.model_sha256'.*different model"):
        run_register(best["model"], mid["eval"], tracking_uri=server, model_name="medgan-sct-bad")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(StepInputError, match="needs an MLflow tracking URI"):
        run_register(best["model"], best["eval"])
    bad_data = tmp_path / "other.json"
    bad_data.write_text(json.dumps({"step": "preprocess"}))
    with pytest.raises(StepInputError, match="the evaluation used data manifest"):
        run_register(best["model"], best["eval"], tracking_uri=server, model_name="medgan-sct-bad",
                     data_manifest_uri=str(bad_data))
    with pytest.raises(StepInputError, match=r"field 'step' is 'train', expected 'evaluate'"):
        run_register(best["model"], best["model"], tracking_uri=server, model_name="medgan-sct-bad")
    assert MlflowClient(tracking_uri=server).search_model_versions("name = 'medgan-sct-bad'") == []
    # CLI: the manifest goes to --output-uri; a repeated call reuses the version
    out = tmp_path / "reg"
    args = ["--model-uri", mid["model"], "--eval-uri", mid["eval"], "--tracking-uri", server,
            "--model-name", "medgan-sct-cli", "--no-require-audit", "--no-require-baseline", "--output-uri", str(out)]
    assert main(args) == 0 and main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    assert [(x["version"], x["created"], x["promoted"]) for x in lines[-2:]] == [("1", True, True), ("1", False, True)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step"] == "register" and manifest["outputs"]["version"] == "1"
    assert (manifest["version"], manifest["promoted"]) == ("1", True) and manifest["model_name"] == "medgan-sct-cli"
    assert manifest["params"]["tracking_uri"] == server
    # bad input (no train manifest there): exit code 2, the message names the file
    assert main(["--model-uri", str(tmp_path / "none"), "--eval-uri", mid["eval"], "--tracking-uri", server]) == 2
    assert f"{tmp_path / 'none'}/manifest.json: not found (expected the output of step 'train')" in capsys.readouterr().err


def test_policy_docstring_examples_run():
    import doctest

    import components.registry_policy as policy

    result = doctest.testmod(policy, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_a_model_evaluated_on_another_test_set_is_registered_not_promoted(models, data, server, tmp_path):
    """Same model, evaluated on a preprocess output whose manifest differs (another data set):
    registered, never compared with the champion's MAE, the reason in the manifest and a tag."""
    best, mid, _ = models
    other = tmp_path / "other-data"
    shutil.copytree(data, other)
    m = json.loads((other / "manifest.json").read_text())
    m["inputs"]["input_uri"] = "s3://another-cohort/"
    (other / "manifest.json").write_text(json.dumps(m, indent=2))
    ev = run_evaluate(str(other), best["model"], str(tmp_path / "eval-other"), tracking_uri=server,
                      figures=0)
    assert ev["outputs"]["aggregate"]["model"]["mae"] == best["mae"] < mid["mae"]  # same subjects, better

    client = MlflowClient(tracking_uri=server)
    name = "medgan-sct-testset"
    kw = dict(model_name=name, tracking_uri=server, require_audit=False, require_baseline=False)
    assert run_register(mid["model"], mid["eval"], **kw)["outputs"]["promoted"]
    out = run_register(best["model"], str(tmp_path / "eval-other"), **kw)["outputs"]
    assert out["created"] and not out["promoted"] and out["version"] == "2"
    assert out["reason"].startswith("not compared with champion v1") and "different test set" in out["reason"]
    assert client.get_model_version(name, "2").tags["alias_decision"] == out["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    # on the champion's test set the same model wins
    won = run_register(best["model"], best["eval"], **kw)["outputs"]
    assert won["promoted"] and client.get_model_version_by_alias(name, "champion").version == won["version"] == "3"


# --------------------------------------------------------------------------- concurrent registers

_BARRIER = None


#: Rounds of the register race: each order of (better, worse) twice. Each round logs two pyfunc
#: models, seconds each; the race itself is over in the first few hundred milliseconds.
ROUNDS = 4


def _init_race_worker(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier
    import torch

    torch.set_num_threads(1)
    import components.register  # noqa: F401  (imports paid before the first round)


def _register_at_barrier(model: str, ev: str, name: str, server: str) -> dict:
    _BARRIER.wait(timeout=300)
    return run_register(model, ev, model_name=name, tracking_uri=server, require_audit=False,
                        require_baseline=False)["outputs"]


def test_concurrent_registers_always_leave_the_better_model_champion(models, server, monkeypatch):
    """Two register steps in two processes, released together by a barrier, ``ROUNDS`` rounds
    (fresh model name each, each order twice): the better model always ends as champion. (The
    worse one may have held the alias for a moment if it finished before the better one's
    version existed; then it says so.)"""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import sys

    best, mid, _ = models
    client = MlflowClient(tracking_uri=server)
    # spawned workers inherit sys.path; a pyfunc loaded earlier in this process put its model's
    # code folder (a stub ``components`` package) in front: give the workers the real one
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p).parent / "MLmodel").is_file()])
    ctx = mp.get_context("spawn")
    both_saw_no_champion = 0
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=_init_race_worker,
                             initargs=(ctx.Barrier(2),)) as pool:
        for rnd in range(ROUNDS):
            name = f"medgan-sct-race-{rnd}"
            pair = (best, mid) if rnd % 2 == 0 else (mid, best)
            futs = [pool.submit(_register_at_barrier, m["model"], m["eval"], name, server) for m in pair]
            outs = {f.result(timeout=600)["test_mae_hu"]: f.result() for f in futs}
            win, lose = outs[best["mae"]], outs[mid["mae"]]
            champ = client.get_model_version_by_alias(name, "champion")
            assert champ.version == win["version"], (rnd, outs)
            assert win["promoted"] and win["champion"] == {"version": win["version"], "mae": best["mae"]}, (rnd, outs)
            if lose["promoted"]:  # it settled before the better version existed: sequential, not a race
                assert lose["champion"]["version"] == lose["version"] and win["alias_moved"], (rnd, outs)
            else:
                assert lose["champion"] == win["champion"], (rnd, outs)
            assert client.get_model_version(name, lose["version"]).tags["alias_decision"] == lose["reason"]
            both_saw_no_champion += win["previous_champion"] is None and lose["previous_champion"] is None
    # how often the naive read-compare-set would have raced (both read "no champion")
    print(f"rounds where both registers saw no champion: {both_saw_no_champion}/{ROUNDS}")


def test_no_credentials_reach_the_registry_or_the_manifest(models, server, tmp_path, capfd, monkeypatch):
    """A tracking URI with user:password: nothing the step records (manifest, version tags and
    description, model description, run params/tags) or prints contains the password, and the
    credentials it moved into MLflow's env vars are gone afterwards."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    _, mid, _ = models
    secret = "s3cr3t-pw-417"
    uri = server.replace("http://", f"http://medgan:{secret}@")
    name = "medgan-sct-creds"
    m = run_register(mid["model"], mid["eval"], model_name=name, tracking_uri=uri, require_audit=False,
                     output_uri=str(tmp_path / "reg"))
    assert m["params"]["tracking_uri"] == server
    client = MlflowClient(tracking_uri=server)
    mv = client.get_model_version(name, m["outputs"]["version"])
    run = client.get_run(mv.run_id)
    recorded = [json.dumps(m), (tmp_path / "reg" / "manifest.json").read_text(), json.dumps(mv.tags),
                mv.description, mv.source, client.get_registered_model(name).description,
                json.dumps(run.data.params), json.dumps(run.data.tags)]
    out, err = capfd.readouterr()
    assert all(secret not in text for text in [*recorded, out, err])
    assert "127.0.0.1" in out + err  # MLflow did print its "View run at" lines, without the password
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
