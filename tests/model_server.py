"""Test/bench helper: a REAL ``mlflow models serve`` process on 127.0.0.1 and a tiny registry.

:class:`ModelServer` runs ``python -m mlflow models serve -m <uri> --env-manager local`` in its
own process group (the scoring server runs uvicorn as a child), polls ``GET /ping`` until 200
and stops the whole group. :func:`register_champion` logs a ``model.pt`` as medgan's pyfunc into
a run of ``tracking_uri``, registers it and points the ``champion`` alias at it.

>>> with ModelServer("models:/medgan-sct@champion", tracking_uri=uri) as url:   # doctest: +SKIP
...     post_nifti(url, "mr.nii.gz")
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.mlflow_server import ServerProcess, free_port

__all__ = ["ModelServer", "register_champion", "post_nifti", "invocations"]


class ModelServer(ServerProcess):
    """Start/stop one ``mlflow models serve``; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, model_uri: str, *, tracking_uri: str, log_dir: str | os.PathLike[str],
                 startup_timeout: float = 180.0, env: dict[str, str] | None = None) -> None:
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"models-serve-{self.port}.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", self.model_uri,
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        # the scoring server execs `uvicorn` by name: this interpreter's bin folder comes first
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri, "PATH": path, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.log_path.parent, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"mlflow models serve exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow models serve not answering /ping after "
                           f"{self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def register_champion(model_pt: str | os.PathLike[str], tracking_uri: str, name: str,
                      artifact_root: str | os.PathLike[str]) -> str:
    """Log ``model_pt`` as medgan's pyfunc, register it as ``name`` and set alias ``champion``;
    returns the version. ``artifact_root``: where a new experiment keeps its artifacts."""
    import mlflow
    from mlflow import MlflowClient

    from components.model_registry import fluent_target
    from components.pyfunc_model import log_pyfunc_model

    with fluent_target(tracking_uri) as uri:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("medgan-serve")
        exp_id = exp.experiment_id if exp else client.create_experiment(
            "medgan-serve", artifact_location=Path(artifact_root).resolve().as_uri())
        with mlflow.start_run(experiment_id=exp_id, run_name="serve-test"):
            info = log_pyfunc_model(model_pt)
        mv = mlflow.register_model(info.model_uri, name)
        client.set_registered_model_alias(name, "champion", mv.version)
        return str(mv.version)


def invocations(url: str, payload: dict[str, Any], timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """POST ``payload`` (JSON) to ``<url>/invocations``; returns (HTTP status, JSON body)."""
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, {"message": body.decode(errors="replace")}


def post_nifti(url: str, data: bytes, timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """POST the bytes of a NIfTI file as the ``mr_nifti_b64`` column; returns (status, body)."""
    b64 = base64.b64encode(data).decode("ascii")
    return invocations(url, {"dataframe_split": {"columns": ["mr_nifti_b64"], "data": [[b64]]}}, timeout)
