"""components.train on a REAL local Ray cluster (``ray start --head`` on 127.0.0.1, 2 CPUs).

One cluster per module. The helpers ``ray_head`` / ``preprocessed_dir`` are reused by
tests/test_tune.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead(str):
    """The GCS address ``127.0.0.1:<port>`` (a ``str``, as before) plus ``dashboard_url``
    (``http://127.0.0.1:<port>``, the Jobs API; None without a dashboard) and ``temp_dir``."""

    dashboard_url: str | None
    temp_dir: str


def _wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: "
                               f"{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: "
                               f"{log_path.read_text()[-2000:]}")
        time.sleep(1)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, dashboard: bool = False) -> Iterator[RayHead]:
    """A Ray head started with ``ray start --head --block`` in its own process group; yields
    its address with ``RAY_ADDRESS`` / ``RAY_AUTH_MODE`` set for this process. Teardown stops
    exactly that process group (not ``ray stop``, which would kill every Ray on the machine).

    ``dashboard=True`` also starts the dashboard (the Jobs API, at ``.dashboard_url``; slow to
    start on 2 cores: waited for up to 240 s) and puts this interpreter's folder first on the
    head's ``PATH``, so that a job's ``python`` is this one (a cluster image has the code)."""
    port, client_port, agent_port = _free_port(), _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           # the Train controller polls workers every 2 s by default and takes one report per
           # poll; the driver propagates this to the controller (tiny steps: poll faster)
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", *env)}
    os.environ.update(env)
    head_env = dict(os.environ)
    dash_args = ["--include-dashboard=false"]
    dashboard_url = None
    if dashboard:
        dash_port = _free_port()
        dashboard_url = f"http://127.0.0.1:{dash_port}"
        dash_args = ["--include-dashboard=true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(dash_port)]
        head_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{head_env.get('PATH', '')}"
    log_path = Path(temp_dir) / "head.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", str(num_cpus), "--port", str(port),
         *dash_args, "--ray-client-server-port", str(client_port),
         "--dashboard-agent-listen-port", str(agent_port),
         "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = RayHead(f"127.0.0.1:{port}")
    address.dashboard_url, address.temp_dir = dashboard_url, temp_dir
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: "
                                   f"{log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.time() > deadline:
                raise RuntimeError("Ray head did not open its GCS port within 90 s")
            time.sleep(0.5)
        if dashboard_url:
            _wait_http(f"{dashboard_url}/api/version", proc, log_path, timeout=240)
        os.environ["RAY_ADDRESS"] = address
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # the whole group: gcs, raylet, workers
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def preprocessed_dir(shards: Path, root: Path, folder: str = "packed") -> Path:
    """A minimal preprocess-step output around packed shards: a manifest whose
    ``outputs.shards.<split>.path`` name ``<folder>/<split>`` (deliberately not the ``shards/``
    preprocess itself uses: the steps must take the paths from the manifest)."""
    from gan_core.data.shards import Shards

    root.mkdir(parents=True, exist_ok=True)
    (root / folder).symlink_to(shards, target_is_directory=True)
    splits = {s: [x["id"] for x in Shards(shards / s).subjects] for s in ("train", "val", "test")}
    (root / "manifest.json").write_text(json.dumps(
        {"step": "preprocess", "splits": splits, "inputs": {}, "params": {},
         "outputs": {"shards": {s: {"path": f"{folder}/{s}"} for s in splits}},
         "counts": {k: len(v) for k, v in splits.items()}, "timings": {}, "code_version": "test"}))
    return root


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with ray_head(num_cpus=2) as address:  # run_train connects through $RAY_ADDRESS
        yield address


@pytest.fixture(scope="module")
def data_uri(tiny_shards, tmp_path_factory) -> str:
    return str(preprocessed_dir(tiny_shards, tmp_path_factory.mktemp("processed")))


def _history(client, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))


def test_bad_manifest_is_named(tmp_path):
    from components.step import StepInputError
    from components.train import run_train

    (tmp_path / "manifest.json").write_text(json.dumps({"step": "ingest"}))
    with pytest.raises(StepInputError, match=r"manifest.json: field 'step' is 'ingest', expected 'preprocess'"):
        run_train(str(tmp_path), str(tmp_path / "out"))


def test_train_two_workers_mlflow(cluster, data_uri, tmp_path):
    from components import mlflow_utils as mlu
    from components.train import run_train
    from gan_core.engine import load_model

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "train"
    m = run_train(data_uri, str(out), framework="cyclegan", preset="tiny", num_workers=2,
                  tracking_uri=tracking, experiment="medgan-test", max_failures=0)
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "config.yaml", "manifest.json",
                                                     "model.pt", "ray"]
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["step"] == "train" and m["steps"] == 8 and m["world_size"] == 2
    # the shards came from where the preprocess manifest points (not <data>/shards)
    assert m["inputs"]["shards"] == {"train": f"{data_uri}/packed/train", "val": f"{data_uri}/packed/val"}
    assert 0 < m["val_mae"] < 3000 and m["images_per_s"] > 0
    assert m["ray_storage_path"] == str(out / "ray") and Path(m["outputs"]["ray_run"]).is_dir()
    fw = load_model(out / "model.pt")
    assert fw.name == "cyclegan"

    c = mlu.client(tracking)
    run = c.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.cycle"] == "10.0" and run.data.params["data.image_size"] == "32"
    assert [h.step for h in _history(c, run.info.run_id, "G")] == [2, 4, 6, 8]
    assert [h.value for h in _history(c, run.info.run_id, "world_size")] == [2.0]
    samples = [a.path for a in c.list_artifacts(run.info.run_id, "samples")]
    assert samples and all(p.endswith(".png") for p in samples)
    png = Path(c.download_artifacts(run.info.run_id, samples[-1], str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worker_killed_resumes_from_checkpoint(cluster, data_uri, tmp_path, monkeypatch):
    import torch

    from components import mlflow_utils as mlu
    from components.raytrain import FAULT_ENV
    from components.train import run_train

    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(FAULT_ENV, f"1:6:{marker}")  # rank 1 SIGKILLs itself at step 6, once
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "train"
    m = run_train(data_uri, str(out), framework="pix2pix", preset="tiny", num_workers=2,
                  steps=12, overrides={"log_every": 2, "checkpoint_every": 4}, max_failures=2,
                  tracking_uri=tracking, experiment="medgan-test")
    assert json.loads(marker.read_text()) == {"rank": 1, "step": 6, "action": "kill",
                                              "committed_steps": [4]}
    assert m["steps"] == 12
    ck = torch.load(Path(m["outputs"]["ray_checkpoint"]) / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 12

    c = mlu.client(tracking)
    rid = m["mlflow_run_id"]
    starts = _history(c, rid, "resume_step")
    assert [s.value for s in starts] == [0.0, 4.0]  # restarted once, from the step-4 checkpoint
    after = [h.step for h in _history(c, rid, "G") if h.timestamp >= starts[-1].timestamp]
    assert after == [6, 8, 10, 12]  # continued right after the checkpoint: no step lost
    assert sorted({h.step for h in _history(c, rid, "G")}) == [2, 4, 6, 8, 10, 12]


def test_failed_run_publishes_nothing_and_rerun_resumes(cluster, data_uri, tmp_path, monkeypatch):
    from ray.train import TrainingFailedError

    from components import mlflow_utils as mlu
    from components.raytrain import FAULT_ENV
    from components.train import run_train

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "train"
    kw = dict(framework="pix2pix", preset="tiny", num_workers=1, max_failures=0,
              tracking_uri=tracking, experiment="medgan-test", run_name="resume-me")
    monkeypatch.setenv(FAULT_ENV, f"0:6:{tmp_path / 'killed.txt'}")
    with pytest.raises(TrainingFailedError):
        run_train(data_uri, str(out), **kw)
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    assert (out / "ray" / "resume-me").is_dir()  # checkpoints kept for the rerun
    c = mlu.client(tracking)
    (failed,) = c.search_runs([mlu.ensure_experiment(tracking, "medgan-test")])
    assert failed.info.status == "FAILED"

    monkeypatch.delenv(FAULT_ENV)
    m = run_train(data_uri, str(out), **kw)  # same output + run name: Ray resumes the run
    assert m["steps"] == 8 and (out / "_SUCCESS").exists()
    assert [h.value for h in _history(c, m["mlflow_run_id"], "resume_step")] == [4.0]
    assert [h.step for h in _history(c, m["mlflow_run_id"], "G")] == [6, 8]
