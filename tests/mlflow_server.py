"""Test helper: a REAL ``mlflow server`` subprocess on 127.0.0.1 (SQLite store, local artifacts).

Started as ``python -m mlflow server`` with the backend in ``<root>/mlflow.db`` and proxied
artifacts in ``<root>/artifacts`` (clients talk HTTP only: ``mlflow-artifacts:/`` URIs), one
uvicorn worker and the server's job runner off (less CPU on small CI machines). MLflow 3's
security middleware accepts ``127.0.0.1`` and ``localhost`` by default, so no extra flags are
needed. Readiness is ``GET /health`` answering 200; stop terminates the whole process group.

>>> with MlflowServer(tmp_path) as url:                                 # doctest: +SKIP
...     MlflowClient(tracking_uri=url).search_experiments()

Also here, for the evaluate/register tests: :func:`preprocess_output` (a preprocess-shaped
folder from the phantom cohort and its shards) and :func:`train_output` (a real tiny training
run's ``model.pt`` + a train-step manifest naming a real MLflow run on the server).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["MlflowServer", "free_port", "preprocess_output", "train_output"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """What every test server process shares: its log tail, stop (SIGTERM to its process group,
    then SIGKILL), and use as a context manager. Subclasses set ``proc``, ``log_path``, ``_log``
    and define ``start()``."""

    proc: subprocess.Popen | None = None
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MlflowServer(ServerProcess):
    """Start/stop one ``mlflow server``; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, root: str | os.PathLike[str], *, startup_timeout: float = 120.0) -> None:
        self.root = Path(root)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "mlflow-server.log"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = self.log_path.open("wb")
        # own process group: mlflow server runs uvicorn as a child; stop() ends the group
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}")



def preprocess_output(cohort: Path, shards: Path, dst: Path) -> Path:
    """A preprocess-step output: ``subjects/<id>/*.nii.gz`` copied from the SynthRAD-layout
    ``cohort``, ``shards/{train,val,test}`` copied from ``shards`` (gan_core.data.pack.pack_cohort)
    and a ``manifest.json`` like the real step's (``components.preprocess``): ``step:
    preprocess``, the shards' ``splits`` and ``outputs.shards.<split>`` = ``{path, n_subjects,
    n_slices, sha256}`` (the next steps read the shard paths from there)."""
    from components.storage import sha256_file

    splits = json.loads((shards / "splits.json").read_text())
    for sid in sorted(sum(splits.values(), [])):
        d = dst / "subjects" / sid
        d.mkdir(parents=True)
        for name in ("mr", "ct", "mask", "lesion"):
            src = cohort / sid / f"{name}.nii.gz"
            if src.exists():
                shutil.copy2(src, d / src.name)
    outputs: dict = {"subjects_dir": "subjects", "shards": {}}
    for name in splits:
        if (shards / name).is_dir():
            shutil.copytree(shards / name, dst / "shards" / name)
            index = json.loads((dst / "shards" / name / "index.json").read_text())
            outputs["shards"][name] = {
                "path": f"shards/{name}", "n_subjects": len(splits[name]),
                "n_slices": int(index["n_slices"]),
                "sha256": {f.name: sha256_file(f) for f in sorted((dst / "shards" / name).iterdir())
                           if f.is_file()}}
    manifest = {"step": "preprocess", "inputs": {"input_uri": str(cohort)}, "params": {},
                "outputs": outputs, "splits": splits,
                "subjects": [{"id": sid} for sid in sorted(sum(splits.values(), []))],
                "counts": {k: len(v) for k, v in splits.items()}, "timings": {}, "code_version": "test"}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def train_output(shards: Path, dst: Path, tracking_uri: str, *, experiment: str = "medgan",
                 steps: int = 8, seed: int = 0, framework: str = "pix2pix",
                 overrides: dict | None = None) -> tuple[Path, str]:
    """Train a real tiny model into ``dst`` and write a train-step manifest whose
    ``mlflow_run_id`` is a new, finished run on ``tracking_uri``; returns ``(dst, run_id)``.
    ``overrides``: dotted config keys over the tiny preset (``{"model.residual": True}``)."""
    from mlflow import MlflowClient

    from gan_core.engine import train
    from gan_core.presets import apply_overrides, preset

    half = steps // 2
    cfg = apply_overrides(preset("tiny", framework), {"seed": seed, "optim.steps_constant": steps - half,
                                                       "optim.steps_decay": half, **(overrides or {})})
    res = train(cfg, shards, dst, progress=False)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_id = client.create_run(exp_id, run_name=f"train-s{seed}-{steps}").info.run_id
    client.log_param(run_id, "steps", steps)
    if res.val_mae is not None:
        client.log_metric(run_id, "val_mae", res.val_mae)
    client.set_terminated(run_id)
    manifest = {"step": "train", "inputs": {"data_uri": str(shards)}, "params": {"steps": steps, "seed": seed},
                "outputs": {"model": "model.pt"}, "counts": {"steps": res.steps}, "timings": {},
                "code_version": "test", "mlflow_run_id": run_id, "val_mae": res.val_mae}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst, run_id
