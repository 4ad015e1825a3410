"""Every task pipeline is a thin file over the one builder: each compiles, loads back with its
own task default, and the application pipelines end at evaluate."""

import importlib
import json

import pytest
import yaml
from kfp import compiler, components

PIPELINES = {"cyclegan_mr_ct": ("cyclegan", "mr2ct", True), "ct_to_mr": ("pix2pix", "ct2mr", False),
             "kspace_recon": ("pix2pix", "kspace", False), "lowdose_ct": ("pix2pix", "lowdose", False),
             "mr_superres": ("pix2pix", "superres", False),
             "label_synthesis": ("dcgan", "labels2ct", False), "slice_synthesis": ("dcgan", "synth", False)}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_task_pipeline_compiles_with_its_defaults(name, tmp_path):
    framework, task, registers = PIPELINES[name]
    mod = importlib.import_module(f"pipelines.{name}")
    out = tmp_path / f"{name}.yaml"
    compiler.Compiler().compile(mod.pipeline, package_path=str(out))
    comp = components.load_component_from_file(str(out))
    inputs = comp.component_spec.inputs
    assert inputs["task"].default == task and inputs["framework"].default == framework
    assert inputs["overrides"].default == "{}"
    spec = json.dumps(yaml.safe_load_all(out.read_text()).__next__())
    assert ("register-op" in spec) is registers
    for step in ("ingest-op", "preprocess-op", "train-op", "evaluate-op", "tune-op"):
        assert step in spec, (name, step)


def test_the_task_and_framework_exist():
    from gan_core.frameworks import available as frameworks
    from gan_core.tasks import available as tasks

    for framework, task, _ in PIPELINES.values():
        assert framework in frameworks() and task in tasks()


def test_kspace_pipeline_runs_locally_end_to_end(tmp_path, monkeypatch):
    """An application pipeline through kfp.local: ingest -> preprocess -> train (Ray) -> evaluate,
    with a task parameter override (8x, centre 0.04) reaching the trained model and MLflow."""
    from pipelines.builder import run_local
    from pipelines.kspace_recon import pipeline

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_local(pipeline, tmp_path, subjects=6, preset="tiny", misalign_mm=0.0,
              overrides=json.dumps({"task.acceleration": 8, "task.center_fraction": 0.04}))
    (job,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
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
