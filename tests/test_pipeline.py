"""The KFP DAG: compiles to IR that loads back, and runs end to end here with kfp.local."""

import json
import os
from pathlib import Path

import yaml
from kfp import components

from pipelines.apps import build_app
from pipelines.builder import run_local

pipeline = build_app("cyclegan_mr_ct", gpus=1)


def test_compile_loads_back_with_secrets_and_gpus(tmp_path):
    out = tmp_path / "p.yaml"
    from kfp import compiler

    compiler.Compiler().compile(pipeline, package_path=str(out))
    comp = components.load_component_from_file(str(out))
    assert comp.name == "cyclegan-mr-ct"
    params = set(comp.component_spec.inputs)
    assert {"storage_root", "framework", "run_tune", "tracking_uri", "require_audit"} <= params
    assert not {p for p in params if "password" in p.lower() or "secret" in p.lower()}
    docs = list(yaml.safe_load_all(out.read_text()))
    spec, platform = docs[0], docs[1]
    tasks = json.dumps(spec)  # tune and train sit inside the If/Else sub-DAGs
    for step in ("ingest-op", "preprocess-op", "train-op", "evaluate-op", "register-op", "tune-op"):
        assert step in tasks, step
    execs = spec["deploymentSpec"]["executors"]
    assert any(e["container"].get("resources", {}).get("accelerator") for e in execs.values())
    secrets = json.dumps(platform)
    assert "medgan-s3" in secrets and "medgan-mlflow" in secrets


def test_local_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = run_local(pipeline, tmp_path, subjects=6, preset="tiny", framework="pix2pix",
                    require_audit=False)
    out = json.loads(res["output"])
    assert out["model_name"] == "medgan-sct" and out["version"] == "1" and out["promoted"] is True
    runs = tmp_path / "runs"
    (job,) = [p for p in runs.iterdir() if p.is_dir()]
    for step in ("ingest", "preprocess", "train", "evaluate"):
        manifest = json.loads((job / step / "manifest.json").read_text())
        assert manifest["step"] == step
    evaluation = json.loads((job / "evaluate" / "manifest.json").read_text())
    assert "baseline_mae_hu" in json.dumps(evaluation)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("medgan-sct", "champion").version) == "1"
    assert os.environ.get("MLFLOW_TRACKING_URI") in (None, res["tracking_uri"])
