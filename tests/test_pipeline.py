"""The KFP DAG: compiles to IR that loads back, and runs end to end here with kfp.local."""

import json
import os
from pathlib import Path

import pytest
import yaml
from kfp import components

from pipelines import ops as pipelines_ops, runtime
from pipelines.apps import build_app
from pipelines.cli import main as cli_main

pipeline = build_app("cyclegan_mr_ct", gpus=1)


def _compiled(tmp_path, p=pipeline) -> tuple[dict, dict]:
    from kfp import compiler

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(p, package_path=str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the DAG (the root's and the If/Else sub-DAGs'), by task name."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: t for dag in dags for name, t in dag["tasks"].items()}


def test_compile_loads_back_with_secrets_and_no_pod_gpus(tmp_path):
    from kfp import compiler

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, package_path=str(out))
    comp = components.load_component_from_file(str(out))
    assert comp.name == "cyclegan-mr-ct"
    params = set(comp.component_spec.inputs)
    assert {"storage_root", "framework", "run_tune", "tracking_uri", "require_audit", "ray_address",
            "launcher", "num_workers", "use_gpu", "gpus_per_worker", "resources_per_worker",
            "max_concurrent_trials", "node_selector", "tolerations", "unpaired", "require_baseline"} <= params
    assert not {p for p in params if "password" in p.lower() or "secret" in p.lower()}
    spec, platform = _compiled(tmp_path)
    tasks = json.dumps(spec)  # tune and train sit inside the If/Else sub-DAGs
    for step in ("ingest-op", "preprocess-op", "train-op", "evaluate-op", "register-op", "tune-op"):
        assert step in tasks, step
    # `unpaired` reaches the steps that pack and train on the unpaired set (the demo's CycleGAN)
    fed = sorted(name for dag in spec["components"].values() if "dag" in dag
                 for name, t in dag["dag"]["tasks"].items()
                 if "unpaired" in t.get("inputs", {}).get("parameters", {}))
    fed += sorted(name for name, t in spec["root"]["dag"]["tasks"].items()
                  if "unpaired" in t.get("inputs", {}).get("parameters", {}))
    assert sorted(fed) == ["preprocess-op", "train-op", "train-op-2", "tune-op"], fed
    register = spec["root"]["dag"]["tasks"]["register-op"]["inputs"]["parameters"]
    assert register["require_baseline"]["componentInputParameter"] == "require_baseline"
    assert comp.component_spec.inputs["require_baseline"].default is True  # the gate is on by default
    execs = spec["deploymentSpec"]["executors"]
    assert len(execs) == 7  # ingest, preprocess, tune, train x2, evaluate, register
    for name, e in execs.items():
        res = e["container"]["resources"]
        assert "accelerator" not in res, f"{name}: a KFP pod must not request a GPU (Ray's workers do)"
        assert res["resourceCpuRequest"] == "2" and res["resourceMemoryRequest"] == "8Gi", name
        assert "pip install" not in json.dumps(e["container"]["command"]), name
        assert e["container"]["image"] == pipelines_ops.IMAGE and ":latest" not in pipelines_ops.IMAGE
        k8s = platform[name]
        assert "node_selector" in json.dumps(k8s["nodeSelector"]), name
        assert "tolerations" in json.dumps(k8s["tolerations"]), name
        secrets = {s["secretName"]: s for s in k8s["secretAsEnv"]}
        assert "medgan-s3" in secrets and all(not s["optional"] for s in secrets.values()), name
        if name not in ("exec-ingest-op", "exec-preprocess-op"):
            assert "medgan-mlflow" in secrets, name


def test_retries_and_caching(tmp_path):
    spec, _ = _compiled(tmp_path)
    tasks = _tasks(spec)
    for name in ("train-op", "train-op-2", "tune-op"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 1, name
        assert tasks[name]["cachingOptions"] == {}, name  # caching off: per-run outputs
    for name in ("ingest-op", "preprocess-op"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
        # the cache key is the task's inputs: none may change per run (the job id did)
        assert "PIPELINE_JOB" not in json.dumps(tasks[name]["inputs"]).upper(), name
        assert "job" not in tasks[name]["inputs"]["parameters"], name


def test_content_uri_identifies_content():
    a = runtime.content_uri("s3://b/r", "ingest", {"subjects": 8, "seed": 0}, code="c1")
    assert a == runtime.content_uri("s3://b/r/", "ingest", {"seed": 0, "subjects": 8}, code="c1")
    assert a.startswith("s3://b/r/ingest/")
    others = {runtime.content_uri("s3://b/r", "ingest", {"subjects": 9, "seed": 0}, code="c1"),
              runtime.content_uri("s3://b/r", "ingest", {"subjects": 8, "seed": 0}, code="c2"),
              runtime.content_uri("s3://b/r", "preprocess", {"subjects": 8, "seed": 0}, code="c1")}
    assert a not in others and len(others) == 3


def test_ray_args_for_train_and_tune():
    assert runtime.ray_args("", "auto", num_workers=1, use_gpu=False, gpus_per_worker=1,
                                  resources_per_worker="") == []
    args = runtime.ray_args("http://h:8265", "jobs", num_workers=4, use_gpu=True,
                                  gpus_per_worker=2, resources_per_worker='{"CPU": 8}')
    assert args == ["--ray-address", "http://h:8265", "--launcher", "jobs", "--use-gpu",
                    "--resources-per-worker", '{"CPU": 8, "GPU": 2}']
    # the two steps' parsers take these options
    from components.train import TrainParams
    from components.step import params_parser

    ns = params_parser(TrainParams, "t", "").parse_args(
        ["--data-uri", "d", "--output-uri", "o", "--num-workers", "4",
         *runtime.ray_args("10.0.0.1:6379", "auto", num_workers=4, use_gpu=True,
                                 gpus_per_worker=1, resources_per_worker="")])
    assert ns.num_workers == 4 and ns.use_gpu is True and ns.ray_address == "10.0.0.1:6379"
    assert json.loads(ns.resources_per_worker) == {"GPU": 1}
    with pytest.raises(ValueError, match="resources_per_worker: expected a JSON object"):
        runtime.ray_args("", "auto", num_workers=1, use_gpu=False, gpus_per_worker=1,
                               resources_per_worker="CPU=4")
    with pytest.raises(ValueError, match="num_workers: expected >= 1"):
        runtime.ray_args("", "auto", num_workers=0, use_gpu=False, gpus_per_worker=1,
                               resources_per_worker="")
    assert runtime.set_args('{"task.acceleration": 8, "model.norm": "instance"}') == [
        "--set", "task.acceleration=8", "--set", 'model.norm="instance"']


def test_local_run_end_to_end(tmp_path, monkeypatch, capsys):
    """``python -m pipelines cyclegan_mr_ct --local``, as ``make demo`` runs it: quiet (one line
    per step, no error-level line), a summary whose paths exist, then the DAG's real outputs."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDGAN_GIT_COMMIT", "0123abcd" * 5)  # as the image sets it
    # the demo's path: CycleGAN on the unpaired set (MR and CT halves of the training subjects)
    # with the CT domain's tissue values (the `unpaired` preset's term) at tiny size. This tiny
    # model does not beat the non-learned baseline (about 240 HU against 158 here), so the
    # register step registers it and does not promote it: the gate as `make demo` runs it
    # (docs/results.md has the demo-size model, which beats the baseline)
    assert cli_main(["cyclegan_mr_ct", "--local", "--workdir", str(tmp_path), "--param", "subjects=6",
                     "--param", "preset=tiny", "--param", "framework=cyclegan",
                     "--param", "unpaired=true",
                     # 200 steps at lr 3e-3 (seconds). One checkpoint: tiny's every 4 steps would
                     # make them minutes
                     "--param", "steps=200", "--param",
                     'overrides={"optim.lr": 0.003, "loss.tissue_value": 100, "log_every": 50, '
                     '"checkpoint_every": 200}',
                     "--param", "require_audit=false"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    steps = [line.split()[0] for line in lines[1:6]]
    assert steps == ["ingest", "preprocess", "train", "evaluate", "register"], printed.out
    assert "ERROR" not in printed.out + printed.err and "executor_input" not in printed.out
    summary = dict(line.strip().split(":", 1) for line in lines[6:] if ":" in line)
    for key in ("model", "metrics", "figures", "logs"):
        assert Path(summary[key].strip()).exists(), (key, summary[key])
    registry = summary["registry"]
    assert "medgan-sct version 1, not promoted (test MAE" in registry, registry
    assert "does not beat the non-learned baseline" in registry, registry
    assert summary["browse"].split()[1:] == ["ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    logs = sorted(p.name for p in Path(summary["logs"].strip()).glob("0[1-9]-*.log"))
    assert logs == ["01-ingest.log", "02-preprocess.log", "03-train.log", "04-evaluate.log", "05-register.log"]
    res = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    runs = tmp_path / "runs"
    (job,) = [p for p in runs.iterdir() if p.is_dir() and p.name not in ("ingest", "preprocess")]
    for step in ("ingest", "preprocess"):  # content-keyed folders, shared by runs with these inputs
        (folder,) = (runs / step).iterdir()
        assert json.loads((folder / "manifest.json").read_text())["step"] == step
    for step in ("train", "evaluate"):
        manifest = json.loads((job / step / "manifest.json").read_text())
        assert manifest["step"] == step
    evaluation = json.loads((job / "evaluate" / "manifest.json").read_text())
    assert "baseline_mae_hu" in json.dumps(evaluation)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version("medgan-sct", "1")
    assert version.tags["beats_baseline"] == "false" and version.tags["alias_decision"] in registry
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("medgan-sct", "champion")
    from components.mlflow_utils import COMMIT_TAG

    commit = "0123abcd" * 5
    assert version.tags["git_commit"] == commit  # the model version's card
    train_run = client.get_run(json.loads((job / "train" / "manifest.json").read_text())["mlflow_run_id"])
    assert train_run.data.tags[COMMIT_TAG] == commit  # every run
    assert os.environ.get("MLFLOW_TRACKING_URI") in (None, res["tracking_uri"])
