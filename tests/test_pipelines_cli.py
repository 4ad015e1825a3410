"""``python -m pipelines``: lists the table, rejects bad input with status 2, compiles a framework or
task registered at runtime, reads ``MEDGAN_PIPELINE_GPUS`` as Ray-side GPUs, and the documented entry file
``pipelines/cyclegan_mr_ct.py`` runs from any folder without touching ``sys.path``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import components

from pipelines.apps import APPS, build_app
from pipelines.builder import GPUS_ENV
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _defaults(ir: Path) -> dict:
    inputs = components.load_component_from_file(str(ir)).component_spec.inputs
    return {k: v.default for k, v in inputs.items()}


def test_list_prints_every_app_and_its_description(tmp_path):
    res = _cli("-m", "pipelines", "--list", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == len(APPS)
    for name, app in APPS.items():
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        assert f"{app.framework}/{app.task}" in line and app.description in line


def test_unknown_app_is_rejected_with_status_2(tmp_path):
    res = _cli("-m", "pipelines", "no_such_app", "--compile", "x.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown application 'no_such_app'" in res.stderr and "kspace_recon" in res.stderr
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("param, message", [
    ("subjcts=3", "unknown pipeline parameter 'subjcts'"),
    ("subjects=many", "'subjects': expected int"),
    ("framework=no_such_gan", "unknown framework 'no_such_gan'"),
    ("task=no_such_task", "unknown task 'no_such_task'"),
    ("subjects", "expected KEY=VALUE"),
])
def test_bad_params_are_rejected_with_status_2(param, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["kspace_recon", "--compile", str(tmp_path / "k.yaml"), "--param", param])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_mode_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["kspace_recon"])
    assert exit_.value.code == 2 and "--compile" in capsys.readouterr().err


def test_compile_params_become_the_compiled_defaults(tmp_path):
    out = tmp_path / "k.yaml"
    assert main(["kspace_recon", "--compile", str(out), "--param", "subjects=5", "--param", "run_tune=true",
                 "--param", 'overrides={"task.acceleration": 8}']) == 0
    d = _defaults(out)
    assert d["subjects"] == 5 and d["run_tune"] is True and d["task"] == "kspace"
    assert json.loads(d["overrides"]) == {"task.acceleration": 8}
    assert [p.name for p in tmp_path.iterdir()] == ["k.yaml"]  # no temporary left behind


@pytest.fixture
def toy_names():
    """A framework and a task registered at runtime (not shipped in gan_core)."""
    from gan_core import frameworks, tasks

    @frameworks.register("toy_cli_gan")
    class ToyGAN(frameworks.GANFramework):
        pass

    @tasks.register("toy_cli_task")
    class ToyTask(tasks.Task):
        pass

    yield "toy_cli_gan", "toy_cli_task"
    frameworks.FRAMEWORKS.remove("toy_cli_gan")
    tasks.TASKS.remove("toy_cli_task")


def test_a_runtime_registered_framework_and_task_compile(toy_names, tmp_path):
    framework, task = toy_names
    out = tmp_path / "toy.yaml"
    assert main(["ct_to_mr", "--compile", str(out), "--param", f"framework={framework}",
                 "--param", f"task={task}"]) == 0
    d = _defaults(out)
    assert d["framework"] == framework and d["task"] == task
    # the same names as the builder's own defaults, no app row needed
    from pipelines.builder import build_pipeline

    p = build_pipeline("toy", framework=framework, task=task, register=False, description="toy")
    assert p.component_spec.inputs["framework"].default == framework


def _executors(pipeline, tmp_path) -> dict[str, dict]:
    from kfp import compiler

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, package_path=str(out))
    return next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]


def test_pipeline_gpus_env_sets_ray_gpus_not_pod_gpus(tmp_path, monkeypatch):
    """``MEDGAN_PIPELINE_GPUS``: GPUs per Ray Train worker (the defaults of ``use_gpu`` and
    ``gpus_per_worker``); no KFP pod ever requests one."""
    inputs = lambda p: p.component_spec.inputs  # noqa: E731
    monkeypatch.delenv(GPUS_ENV, raising=False)
    p = build_app("lowdose_ct")
    assert inputs(p)["use_gpu"].default is True and inputs(p)["gpus_per_worker"].default == 1.0
    execs = _executors(p, tmp_path)
    assert {"exec-train-op", "exec-train-op-2", "exec-tune-op", "exec-evaluate-op"} <= set(execs)
    assert not [n for n, e in execs.items() if "accelerator" in e["container"].get("resources", {})]
    monkeypatch.setenv(GPUS_ENV, "2")
    assert inputs(build_app("lowdose_ct"))["gpus_per_worker"].default == 2.0
    monkeypatch.setenv(GPUS_ENV, "0")
    p = build_app("lowdose_ct")
    assert inputs(p)["use_gpu"].default is False
    assert not [n for n, e in _executors(p, tmp_path).items()
                if "accelerator" in e["container"].get("resources", {})]
    monkeypatch.setenv(GPUS_ENV, "two")
    with pytest.raises(ValueError, match=f"{GPUS_ENV}: expected a non-negative number"):
        build_app("lowdose_ct")


def test_pod_requests_env(tmp_path, monkeypatch):
    from pipelines.builder import CPU_ENV, MEMORY_ENV

    monkeypatch.setenv(CPU_ENV, "500m")
    monkeypatch.setenv(MEMORY_ENV, "2Gi")
    execs = _executors(build_app("lowdose_ct"), tmp_path)
    assert {(e["container"]["resources"]["resourceCpuRequest"],
             e["container"]["resources"]["resourceMemoryRequest"]) for e in execs.values()} == {("500m", "2Gi")}
    monkeypatch.setenv(MEMORY_ENV, "2 gigabytes")
    with pytest.raises(ValueError, match=f"{MEMORY_ENV}: expected a Kubernetes quantity"):
        build_app("lowdose_ct")


def test_dict_and_list_params(tmp_path):
    out = tmp_path / "k.yaml"
    assert main(["kspace_recon", "--compile", str(out), "--param", 'node_selector={"pool": "cpu"}',
                 "--param", 'tolerations=[{"key": "dedicated", "operator": "Exists"}]',
                 "--param", "ray_address=http://medgan-head-svc:8265"]) == 0
    d = _defaults(out)
    assert d["node_selector"] == {"pool": "cpu"} and d["tolerations"][0]["key"] == "dedicated"
    assert d["ray_address"] == "http://medgan-head-svc:8265" and d["launcher"] == "auto"
    with pytest.raises(SystemExit):
        main(["kspace_recon", "--compile", str(out), "--param", "node_selector=[1]"])


def test_the_entry_file_runs_from_another_folder(tmp_path):
    """``python pipelines/cyclegan_mr_ct.py`` puts pipelines/ (not the repo) on sys.path: the
    installed package must resolve, with no sys.path edits anywhere in pipelines/."""
    res = _cli(str(REPO / "pipelines" / "cyclegan_mr_ct.py"), "--compile", "c.yaml",
               "--param", "framework=pix2pix", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    comp = components.load_component_from_file(str(tmp_path / "c.yaml"))
    assert comp.name == "cyclegan-mr-ct" and comp.component_spec.inputs["framework"].default == "pix2pix"
    assert "register-op" in (tmp_path / "c.yaml").read_text()
    for src in (REPO / "pipelines").glob("*.py"):
        text = src.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, src
