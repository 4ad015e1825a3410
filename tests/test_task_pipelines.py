"""Every application is one row of ``pipelines.apps.APPS`` over the one builder: each compiles
through the CLI, loads back with its own framework/task defaults, and only MR -> CT registers."""

import json

import pytest
import yaml
from kfp import components

from pipelines.apps import APPS, build_app
from pipelines.cli import main


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_app_compiles_with_its_defaults(name, tmp_path):
    app = APPS[name]
    out = tmp_path / f"{name}.yaml"
    assert main([name, "--compile", str(out)]) == 0
    comp = components.load_component_from_file(str(out))
    assert comp.name == name.replace("_", "-")
    inputs = comp.component_spec.inputs
    assert inputs["task"].default == app.task and inputs["framework"].default == app.framework
    assert inputs["overrides"].default == "{}"
    spec = json.dumps(next(yaml.safe_load_all(out.read_text())))
    assert ("register-op" in spec) is app.register
    for step in ("ingest-op", "preprocess-op", "train-op", "evaluate-op", "tune-op"):
        assert step in spec, (name, step)


def test_only_mr_to_ct_registers():
    assert {name for name, app in APPS.items() if app.register} == {"cyclegan_mr_ct"}


def test_the_task_and_framework_exist():
    from gan_core.frameworks import get_framework
    from gan_core.tasks import get_task

    for app in APPS.values():
        assert get_framework(app.framework).name == app.framework
        assert get_task(app.task).name == app.task


def test_kspace_pipeline_runs_locally_end_to_end(tmp_path, monkeypatch):
    """An application pipeline through kfp.local: ingest -> preprocess -> train (Ray) -> evaluate,
    with a task parameter override (8x, centre 0.04) reaching the trained model and MLflow.
    Small: 4 subjects (2/1/1), no registration of unmisaligned pairs (test_pipeline runs the
    registering DAG)."""
    from pipelines.builder import run_local

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_local(build_app("kspace_recon"), tmp_path, subjects=4, preset="tiny", misalign_mm=0.0,
              register_method="none",
              overrides=json.dumps({"task.acceleration": 8, "task.center_fraction": 0.04}))
    (job,) = [p for p in (tmp_path / "runs").iterdir()
              if p.is_dir() and p.name not in ("ingest", "preprocess")]
    assert not (job / "register").exists()
    cfg = yaml.safe_load((job / "train" / "config.yaml").read_text())
    assert cfg["task"]["name"] == "kspace" and cfg["task"]["acceleration"] == 8
    assert cfg["loss"]["frequency"] > 0
    ev = json.loads((job / "evaluate" / "manifest.json").read_text())
    assert ev["outputs"]["task"] == "kspace"
    assert {"model", "model-raw", "baseline"} <= set(ev["outputs"]["aggregate"])
    assert {"test_nmse", "test_raw_nmse", "baseline_nmse", "test_ssim"} <= set(ev["summary"])
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(ev["outputs"]["mlflow_run_id"])
    assert run.data.tags["medgan.task"] == "kspace" and "test_nmse" in run.data.metrics
