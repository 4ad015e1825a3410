"""What the pipeline's step pods run besides ``components``: the content-keyed output folders of
the cached steps and the CLI options of train/tune. No kfp import (a step imports this module with
KFP's runtime subset of ``kfp.dsl``); pure functions.

>>> content_uri("s3://b/runs", "ingest", {"subjects": 8, "seed": 0}, code="abc")
's3://b/runs/ingest/94a39367f53dc797'
>>> ray_args("http://head:8265", "auto", num_workers=2, use_gpu=True, gpus_per_worker=1,
...          resources_per_worker="")
['--ray-address', 'http://head:8265', '--use-gpu', '--resources-per-worker', '{"GPU": 1}']
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["content_uri", "ray_args", "set_args", "run_step"]


def content_uri(root: str, step: str, params: dict[str, Any], code: str | None = None) -> str:
    """``<root>/<step>/<16 hex>``: the folder of a cached step's output, keyed on ``params`` and
    the code version ``code`` (default: ``components.step.code_info()``, the image's commit)."""
    if code is None:
        from components.step import code_info

        info = code_info()
        code = f"{info['gan_core']}+{info['git_commit'] or 'unknown'}"
    key = json.dumps({"step": step, "params": params, "code": code}, sort_keys=True, default=str)
    return f"{root.rstrip('/')}/{step}/{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def ray_args(ray_address: str, launcher: str, *, num_workers: int, use_gpu: bool,
             gpus_per_worker: float, resources_per_worker: str) -> list[str]:
    """The Ray CLI options of the train/tune steps (without the worker count's flag, which the
    two steps name differently). ``resources_per_worker``: JSON (``'{"CPU": 4}'``) or empty;
    with ``use_gpu`` it gets ``"GPU": gpus_per_worker`` unless it names GPU itself."""
    if num_workers < 1:
        raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
    try:
        resources = json.loads(resources_per_worker or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"resources_per_worker: expected a JSON object such as "
                         f"'{{\"CPU\": 4}}', got {resources_per_worker!r} ({e})") from None
    if not isinstance(resources, dict):
        raise ValueError(f"resources_per_worker: expected a JSON object, got {resources_per_worker!r}")
    args = ["--ray-address", ray_address] if ray_address else []
    if launcher and launcher != "auto":
        args += ["--launcher", launcher]
    if use_gpu:
        args.append("--use-gpu")
        if gpus_per_worker <= 0:
            raise ValueError(f"gpus_per_worker: expected > 0 with use_gpu, got {gpus_per_worker}")
        resources.setdefault("GPU", gpus_per_worker)
    if resources:
        args += ["--resources-per-worker", json.dumps(resources)]
    return args


def set_args(overrides: str) -> list[str]:
    """``'{"task.acceleration": 8}'`` -> ``["--set", "task.acceleration=8"]`` (values as JSON,
    which the steps read back as YAML)."""
    try:
        values = json.loads(overrides or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"overrides: expected a JSON object, got {overrides!r} ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"overrides: expected a JSON object, got {overrides!r}")
    return [a for k, v in values.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def run_step(module: str, argv: list[str]) -> None:
    """Run ``components.<module>.main(argv)``; a non-zero exit status fails the KFP task."""
    import importlib

    code = importlib.import_module(f"components.{module}").main(argv)
    if code:
        raise SystemExit(code)
