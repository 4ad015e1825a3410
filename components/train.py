"""Pipeline step ``train``: Ray Train (``TorchTrainer``) over ``gan_core.engine.train``.

Inputs and outputs (``data_uri`` / ``output_uri``: a local folder or ``s3://bucket/prefix``)::

    <data_uri>/manifest.json           step "preprocess" (validated)
    <data_uri>/shards/{train,val}/     packed shards (gan_core.data.shards.pack_shards)
    <out>/model.pt                     inference weights + config (gan_core.engine.save_model)
    <out>/config.yaml                  the full TrainConfig of the run
    <out>/manifest.json                step "train": mlflow_run_id, val_mae, steps, images_per_s,
                                       ray_storage_path, world_size, ...
    <out>/ray/<run name>/              Ray Train run: checkpoints (RunConfig.storage_path)

How it runs:

* The driver connects to ``ray_address`` / ``$RAY_ADDRESS`` or starts a local Ray, creates the
  MLflow run (so its id is known) and fits a ``TorchTrainer`` (gloo on CPU, NCCL on GPU).
* Every worker gets the shards (the local folder, or the S3 prefix downloaded once per node),
  resumes from ``ray.train.get_checkpoint()`` when Ray restarts it (the Ray checkpoint holds
  gan_core's ``checkpoint.pt``) and runs the one training loop with each net wrapped by
  ``ray.train.torch.prepare_model`` (DDP). Data sharding is gan_core's ``InfiniteSampler`` (by
  rank), not a ``DistributedSampler``.
* At each log step all ranks call ``ray.train.report``; at checkpoint steps rank 0 attaches a
  checkpoint directory. Rank 0 logs losses (with their step), a ``resume_step`` marker per
  (re)start and, at each checkpoint, a PNG grid ``MR | synthetic CT | CT`` to MLflow.
* Worker failures are retried ``max_failures`` times from the latest checkpoint; rerunning the
  step with the same ``output_uri`` (and ``run_name``) resumes an interrupted run.
* After ``fit`` the driver exports the final checkpoint to ``model.pt``, validates it (MAE in HU
  on the val shards) and publishes the output (``components.storage.staged_output``).

Example:
    >>> m = run_train("runs/processed", "runs/train", framework="pix2pix",   # doctest: +SKIP
    ...               preset="demo", num_workers=2, tracking_uri="sqlite:///runs/mlflow.db")
    >>> m["val_mae"], m["mlflow_run_id"]                                  # doctest: +SKIP
    (142.7, '5f0c...')

CLI: ``python -m components.train --data-uri URI --output-uri URI [--num-workers 2 ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

import gan_core
from components import mlflow_utils as mlu
from components import storage
from gan_core.config import TrainConfig, apply_overrides, from_dict, parse_set, preset, save_config
from gan_core.engine import CHECKPOINT, MODEL

__all__ = ["MANIFEST", "RAY_DIR", "FAULT_ENV", "TrainStepError", "load_preprocess_manifest",
           "build_config", "with_total_steps", "ray_run_name", "ray_storage", "ray_session",
           "local_shards", "train_loop_per_worker", "publish_output", "run_train", "main"]

log = logging.getLogger(__name__)

#: Name of the step manifest inside the output.
MANIFEST = "manifest.json"
#: Folder (relative to the output) that is the Ray ``RunConfig.storage_path``.
RAY_DIR = "ray"
#: Test hook: ``"<rank>:<step>:<marker file>"`` makes that worker SIGKILL itself once, at that
#: log step, before it reports and after Ray committed the earlier checkpoints (the marker file
#: makes it happen only once).
FAULT_ENV = "MEDGAN_FAULT_KILL"
#: Written next to ``checkpoint.pt`` in each Ray checkpoint.
CKPT_META = "medgan_checkpoint.json"


class TrainStepError(ValueError):
    """Bad input to the train step (manifest, config, arguments); the message names it."""


# --------------------------------------------------------------------------- inputs


def load_preprocess_manifest(data_uri: str) -> dict[str, Any]:
    """Read and check ``<data_uri>/manifest.json`` (step ``preprocess``, splits, train shards).

    >>> try:
    ...     load_preprocess_manifest("/nonexistent")
    ... except TrainStepError as e:
    ...     print(e)
    /nonexistent/manifest.json: no preprocess manifest (run the preprocess step first)
    """
    uri = storage.join(data_uri, MANIFEST)
    try:
        m = storage.read_json(uri)
    except storage.StorageNotFoundError:
        raise TrainStepError(f"{uri}: no preprocess manifest (run the preprocess step first)") from None
    except storage.StorageError as e:
        raise TrainStepError(f"{uri}: {e}") from None
    if not isinstance(m, dict):
        raise TrainStepError(f"{uri}: expected a JSON object, got {type(m).__name__}")
    if m.get("step") != "preprocess":
        raise TrainStepError(f"{uri}: field 'step' is {m.get('step')!r}, expected 'preprocess'")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits.get("train"):
        raise TrainStepError(f"{uri}: field 'splits' must map 'train' (and 'val', 'test') to "
                             f"subject ids, got {splits!r:.200}")
    shards = storage.join(data_uri, "shards", "train")
    if not storage.exists(shards):
        raise TrainStepError(f"{uri}: the train shards {shards} are missing")
    return m


def with_total_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    """Copy of ``cfg`` running ``steps`` iterations, keeping the constant/decay LR ratio.

    >>> c = with_total_steps(preset("demo", "pix2pix"), 10)
    >>> c.total_steps, c.optim.steps_constant
    (10, 5)
    """
    if int(steps) < 1:
        raise TrainStepError(f"steps: expected a positive integer, got {steps!r}")
    steps = int(steps)
    o = cfg.optim
    const = round(steps * o.steps_constant / max(o.steps_constant + o.steps_decay, 1))
    const = min(max(const, 0), steps)
    return apply_overrides(cfg, {"optim.steps_constant": const, "optim.steps_decay": steps - const})


def build_config(framework: str = "cyclegan", preset_name: str = "demo", config_uri: str | None = None,
                 overrides: dict[str, Any] | None = None, steps: int | None = None,
                 task: str = "mr2ct") -> TrainConfig:
    """The run's config: ``config_uri`` (a YAML TrainConfig, e.g. tune's ``best_config.yaml``)
    if given, else ``preset(preset_name, framework, task)``; then ``overrides``; then ``steps``.

    >>> build_config("pix2pix", "tiny", overrides={"loss.l1": 50}).loss.l1
    50.0
    """
    if config_uri:
        try:
            data = yaml.safe_load(storage.read_text(config_uri))
        except storage.StorageError as e:
            raise TrainStepError(f"config {config_uri}: {e}") from None
        except yaml.YAMLError as e:
            raise TrainStepError(f"config {config_uri}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise TrainStepError(f"config {config_uri}: expected a mapping at top level")
        try:
            cfg = from_dict(data)
        except (ValueError, KeyError) as e:
            raise TrainStepError(f"config {config_uri}: {e}") from None
    else:
        try:
            cfg = preset(preset_name, framework, task)
        except (ValueError, KeyError) as e:
            raise TrainStepError(f"preset {preset_name!r} / framework {framework!r} / task {task!r}: "
                                 f"{e}") from None
    if overrides:
        try:
            cfg = apply_overrides(cfg, overrides)
        except ValueError as e:
            raise TrainStepError(f"overrides: {e}") from None
    if steps is not None:
        cfg = with_total_steps(cfg, steps)
    return cfg


def ray_run_name(output_uri: str, run_name: str | None = None) -> str:
    """Stable Ray run name: ``run_name`` or ``train-<hash of output_uri>`` (rerun = resume).

    >>> ray_run_name("s3://b/runs/r1") == ray_run_name("s3://b/runs/r1/")
    True
    """
    if run_name:
        return run_name
    digest = hashlib.sha256(str(output_uri).rstrip("/").encode()).hexdigest()[:10]
    return f"train-{digest}"


def ray_storage(uri: str) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray's ``RunConfig``.

    Local paths are made absolute. For ``s3://`` with ``AWS_ENDPOINT_URL(_S3)`` set (MinIO, moto)
    an explicit pyarrow ``S3FileSystem`` with that endpoint is returned (credentials still come
    from the environment of each process) and the path loses its ``s3://`` prefix, as Ray expects.
    """
    if not storage.is_s3(uri):
        return os.path.abspath(str(uri)), None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return str(uri), None
    from pyarrow import fs as pafs

    parts = urlsplit(endpoint)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    filesystem = pafs.S3FileSystem(endpoint_override=parts.netloc or parts.path,
                                   scheme=parts.scheme or "https", region=region)
    return str(uri)[len("s3://"):], filesystem


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connect to ``address`` / ``$RAY_ADDRESS`` or start a local Ray; shut down only what we
    started (an already initialised Ray is left alone)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or None)
    try:
        yield
    finally:
        ray.shutdown()


def local_shards(shards_uri: str) -> Path:
    """A local folder with the shards at ``shards_uri``: the folder itself, or (S3) a per-node
    cache ``$MEDGAN_CACHE_DIR|<tmp>/medgan-shards/<hash>`` filled once under a file lock."""
    if not storage.is_s3(shards_uri):
        p = Path(shards_uri)
        if not p.is_dir():
            raise TrainStepError(f"shards {shards_uri}: no such directory on this node")
        return p
    import fcntl

    root = Path(os.environ.get("MEDGAN_CACHE_DIR") or tempfile.gettempdir()) / "medgan-shards"
    root.mkdir(parents=True, exist_ok=True)
    dest = root / hashlib.sha256(shards_uri.rstrip("/").encode()).hexdigest()[:16]
    with open(root / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".complete").exists():
            part = Path(tempfile.mkdtemp(prefix=f"{dest.name}.part-", dir=root))
            try:
                storage.download_dir(shards_uri, part)
                (part / ".complete").write_text(shards_uri)
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(part, dest)
            finally:
                shutil.rmtree(part, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- worker side


def _fault_from_env() -> dict[str, Any] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        rank, step, marker = spec.split(":", 2)
        return {"rank": int(rank), "step": int(step), "marker": marker}
    except ValueError:
        raise TrainStepError(f"{FAULT_ENV}={spec!r}: expected '<rank>:<step>:<marker file>'") from None


def sample_figure(fw: Any, val_dir: str | Path, path: str | Path, n: int = 3) -> Path:
    """PNG grid, one row per val slice: input | output | target (CT shown in HU); unconditional
    synthesis: a row of samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gan_core.data.normalize import unit_to_ct
    from gan_core.data.shards import SliceDataset
    from gan_core.tasks import build_task
    from gan_core.engine import translate_slices

    task = build_task(fw.cfg.task)
    ds = SliceDataset(val_dir, min_body_fraction=0.2, task=task,
                      image_size=fw.cfg.data.image_size if task.in_channels == 0 else None)
    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    show = ((lambda x: unit_to_ct(x), (-1000, 2000), " (HU)") if task.target == "ct"
            else (lambda x: x, (-1, 1), ""))
    fig, axes = plt.subplots(len(idx), 3, figsize=(7.5, 2.6 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        s = ds[int(i)]
        pred = translate_slices(fw, s["A"][None])[0, 0].numpy()
        a = s["A"].numpy()
        a_img = (a.argmax(0) / max(a.shape[0] - 1, 1) * 2 - 1 if a.shape[0] > 1
                 else a[0] if a.shape[0] == 1 else np.full(pred.shape, -1.0))
        panels = [(a_img, f"input ({task.source or 'noise'})", (-1, 1)),
                  (show[0](pred), f"output{show[2]}", show[1]),
                  (show[0](s["B"][0].numpy()), f"{task.target}{show[2]}", show[1])]
        for ax, (img, title, (lo, hi)) in zip(axes[row], panels):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class _Reporter:
    """gan_core's ``report(step, metrics, checkpoint_path)`` hook inside a Ray Train worker."""

    def __init__(self, rank: int, mlflow_cfg: dict[str, str] | None, val_dir: Path | None,
                 fault: dict[str, Any] | None) -> None:
        self.rank, self.ml, self.val_dir, self.fault = rank, mlflow_cfg, val_dir, fault

    def _maybe_die(self, step: int) -> None:
        f = self.fault
        if f and f["rank"] == self.rank and f["step"] == step and not os.path.exists(f["marker"]):
            import ray.train

            # die between checkpoints: wait until Ray has committed every earlier report (a
            # report is committed only once the controller has polled it from all ranks)
            done = ray.train.get_all_reported_checkpoints(timeout_s=60)
            Path(f["marker"]).write_text(f"killed rank {self.rank} at step {step} after "
                                         f"{len(done)} committed checkpoint(s)\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def _log_samples(self, ckpt: Path, step: int) -> None:
        if not (self.ml and self.val_dir is not None):
            return
        from gan_core.engine import load_model

        try:
            with tempfile.TemporaryDirectory(prefix="medgan-samples-") as d:
                png = sample_figure(load_model(ckpt), self.val_dir, Path(d) / f"step_{step:07d}.png")
                mlu.client(self.ml["tracking_uri"]).log_artifact(self.ml["run_id"], str(png), "samples")
        except Exception as e:  # noqa: BLE001 - a figure must never stop training
            log.warning("could not log sample images at step %d: %s", step, e)

    def __call__(self, step: int, metrics: dict[str, float], ckpt: Path | None) -> None:
        import ray.train

        self._maybe_die(step)
        out = {k: float(v) for k, v in metrics.items()}
        out["step"] = step
        if self.rank == 0 and self.ml:
            mlu.log_metrics(self.ml["tracking_uri"], self.ml["run_id"],
                            {k: v for k, v in out.items() if k != "step"}, step=step)
        if ckpt is not None and self.rank == 0:
            self._log_samples(ckpt, step)
            with tempfile.TemporaryDirectory(prefix="medgan-ckpt-", ignore_cleanup_errors=True) as d:
                try:
                    os.link(ckpt, Path(d) / CHECKPOINT)  # gan_core replaces the file, never edits it
                except OSError:
                    shutil.copy2(ckpt, Path(d) / CHECKPOINT)
                (Path(d) / CKPT_META).write_text(json.dumps({"step": step}))
                ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(out)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: resume from the Ray checkpoint if any, then ``gan_core.engine.train``.

    ``config``: ``{"config": TrainConfig dict, "shards_uri": str, "mlflow": {"tracking_uri",
    "run_id"} | None, "fault": {...} | None}``. Returns (rank 0's value reaches
    ``Result.return_value``) steps, seconds, images_per_s, val_mae and the resume step.
    """
    import ray.train
    import ray.train.torch

    from gan_core.engine import train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = from_dict(config["config"])
    shards = local_shards(config["shards_uri"])
    val_dir = shards / "val" if (shards / "val").is_dir() else None
    ml = config.get("mlflow")
    work = Path(tempfile.mkdtemp(prefix=f"medgan-worker{rank}-"))
    try:
        resume, start = None, 0
        ck = ray.train.get_checkpoint()
        if ck is not None:
            d = Path(ck.to_directory(str(work / "resume")))
            resume = d / CHECKPOINT
            if not resume.exists():
                raise TrainStepError(f"Ray checkpoint {ck.path} holds no {CHECKPOINT}")
            start = int(json.loads((d / CKPT_META).read_text())["step"]) if (d / CKPT_META).exists() else -1
        if rank == 0 and ml:
            mlu.log_metrics(ml["tracking_uri"], ml["run_id"], {"resume_step": start, "world_size": world},
                            step=max(start, 0))
        res = train(cfg, shards, work / "run", device=ray.train.torch.get_device(), rank=rank,
                    world_size=world, wrap=ray.train.torch.prepare_model,
                    report=_Reporter(rank, ml, val_dir, config.get("fault")),
                    resume_from=resume, progress=False)
        return {"steps": res.steps, "seconds": res.seconds, "images_per_s": res.images_per_s,
                "val_mae": res.val_mae, "resumed_from": start, "world_size": world}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- driver side


def publish_output(output_uri: str, fill: Callable[[Path], None]) -> None:
    """Publish ``output_uri`` via ``staged_output`` while keeping its ``ray/`` run folder.

    ``fill(staging_dir)`` writes the step's files. ``staged_output`` replaces the whole output,
    so the Ray folder is carried into the staging dir: renamed (local, no copy) or downloaded
    and uploaded again (S3).
    """
    ray_uri = storage.join(output_uri, RAY_DIR)
    with storage.staged_output(output_uri) as d:
        fill(d)
        if storage.is_s3(output_uri):
            if storage.exists(ray_uri):
                storage.download_dir(ray_uri, d / RAY_DIR)
        elif Path(ray_uri).is_dir():
            os.rename(ray_uri, d / RAY_DIR)  # last statement: nothing can fail after it here


def _ray_uri(output_uri: str, path: str) -> str:
    """A Ray storage path as a URI (Ray drops ``s3://`` when given an explicit filesystem)."""
    if storage.is_s3(output_uri) and not str(path).startswith("s3://"):
        return f"s3://{str(path).lstrip('/')}"
    return str(path)


def _export(result: Any, cfg: TrainConfig, shards_uri: str) -> tuple[Any, int, float | None, TrainConfig]:
    """Framework from the final Ray checkpoint, its step, its val MAE (HU) and config."""
    from gan_core.engine import load_checkpoint, validate
    from gan_core.frameworks import build_framework

    ck = result.checkpoint
    if ck is None:
        raise TrainStepError("the Ray run reported no checkpoint; nothing to export")
    with tempfile.TemporaryDirectory(prefix="medgan-export-") as tmp:
        d = Path(ck.to_directory(str(Path(tmp) / "ckpt")))
        sd = load_checkpoint(d / CHECKPOINT)
    step = int(sd["step"])
    final_cfg = from_dict(sd["config"])
    if step != final_cfg.total_steps:
        raise TrainStepError(f"final Ray checkpoint {ck.path} is at step {step}, expected "
                             f"{final_cfg.total_steps}")
    final_cfg.compile = False
    fw = build_framework(final_cfg, device="cpu")
    fw.load_state_dict(sd["framework"])
    fw.train(False)
    val_uri = storage.join(shards_uri, "val")
    val_mae = None
    if storage.exists(val_uri):
        val_mae = float(validate(fw, local_shards(val_uri)))
    return fw, step, val_mae, final_cfg


def run_train(data_uri: str, output_uri: str, *, framework: str = "cyclegan", preset: str = "demo",
              task: str = "mr2ct", config_uri: str | None = None, overrides: dict[str, Any] | None = None,
              num_workers: int = 1, use_gpu: bool = False,
              resources_per_worker: dict[str, float] | None = None, max_failures: int = 2,
              tracking_uri: str | None = None, experiment: str = "medgan",
              run_name: str | None = None, steps: int | None = None,
              ray_address: str | None = None) -> dict[str, Any]:
    """Train on the preprocess output at ``data_uri`` with Ray Train; publish to ``output_uri``.

    Returns the manifest (also written to ``<output_uri>/manifest.json``). MLflow logging is on
    when ``tracking_uri`` or ``$MLFLOW_TRACKING_URI`` is set (else ``mlflow_run_id`` is null).

    >>> m = run_train("work/processed", "work/train", framework="pix2pix", preset="tiny",
    ...               num_workers=2, tracking_uri="sqlite:///work/mlflow.db")  # doctest: +SKIP
    >>> sorted(storage.list_files("work/train"))[:3]                             # doctest: +SKIP
    ['_SUCCESS', 'config.yaml', 'manifest.json']
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from gan_core.engine import save_model

    t0 = time.perf_counter()
    if num_workers < 1:
        raise TrainStepError(f"num_workers: expected >= 1, got {num_workers}")
    prep = load_preprocess_manifest(data_uri)
    shards_uri = storage.join(data_uri, "shards")
    cfg = build_config(framework, preset, config_uri, overrides, steps, task)
    name = ray_run_name(output_uri, run_name)
    ray_uri = storage.join(output_uri, RAY_DIR)
    storage_path, filesystem = ray_storage(ray_uri)
    tracking = mlu.resolve_tracking_uri(tracking_uri)
    run_id = None
    if tracking:
        run_id = mlu.create_run(tracking, experiment, run_name=run_name or name,
                                tags={"medgan.step": "train", "medgan.ray_run": name,
                                      "medgan.framework": cfg.framework})
        mlu.log_config(tracking, run_id, cfg, {"num_workers": num_workers, "use_gpu": use_gpu,
                                              "data_uri": data_uri})
    else:
        log.warning("no MLflow tracking URI (--tracking-uri or %s): not logging to MLflow",
                    mlu.TRACKING_ENV)
    loop_cfg = {"config": cfg.to_dict(), "shards_uri": shards_uri,
                "mlflow": {"tracking_uri": tracking, "run_id": run_id} if run_id else None,
                "fault": _fault_from_env()}
    try:
        with ray_session(ray_address):
            trainer = TorchTrainer(
                train_loop_per_worker, train_loop_config=loop_cfg,
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                                       resources_per_worker=resources_per_worker),
                run_config=ray.train.RunConfig(
                    name=name, storage_path=storage_path, storage_filesystem=filesystem,
                    failure_config=ray.train.FailureConfig(max_failures=max_failures),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
            t_fit = time.perf_counter()
            result = trainer.fit()
            fit_s = time.perf_counter() - t_fit
            fw, step, val_mae, final_cfg = _export(result, cfg, shards_uri)
        ret = result.return_value or {}
        ray_run_uri = storage.join(ray_uri, name)
        manifest: dict[str, Any] = {
            "step": "train",
            "inputs": {"data_uri": data_uri, "config_uri": config_uri,
                       "preprocess_code_version": prep.get("code_version")},
            "params": {"framework": final_cfg.framework, "preset": None if config_uri else preset,
                       "overrides": overrides or {}, "steps": steps, "num_workers": num_workers,
                       "use_gpu": use_gpu, "resources_per_worker": resources_per_worker,
                       "max_failures": max_failures, "experiment": experiment,
                       "ray_address": ray_address or os.environ.get("RAY_ADDRESS"),
                       "config": final_cfg.to_dict()},
            "outputs": {"model": MODEL, "config": "config.yaml",
                        "ray_storage_path": ray_uri, "ray_run": ray_run_uri,
                        "ray_checkpoint": _ray_uri(output_uri, result.checkpoint.path)},
            "counts": {"steps": step, "world_size": num_workers,
                       "train_subjects": len(prep["splits"].get("train", [])),
                       "val_subjects": len(prep["splits"].get("val", []) or [])},
            "timings": {"fit_s": round(fit_s, 3), "total_s": round(time.perf_counter() - t0, 3),
                        "last_attempt_train_s": ret.get("seconds")},
            "code_version": gan_core.__version__,
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": mlu.redact_uri(tracking),
            "mlflow_experiment": experiment if run_id else None,
            "val_mae": val_mae,
            "steps": step,
            "images_per_s": ret.get("images_per_s"),
            "ray_storage_path": ray_uri,
            "world_size": num_workers,
        }

        def fill(d: Path) -> None:
            save_model(fw, d / MODEL, {"val_mae": val_mae, "step": step})
            save_config(final_cfg, d / "config.yaml")
            storage.write_json(str(d / MANIFEST), manifest)

        publish_output(output_uri, fill)
        if run_id:
            mlu.log_metrics(tracking, run_id, {"final_val_mae": val_mae if val_mae is not None
                                               else float("nan"),
                                               "images_per_s": ret.get("images_per_s") or 0.0},
                            step=step)
            with tempfile.TemporaryDirectory() as d:
                save_config(final_cfg, Path(d) / "config.yaml")
                storage.write_json(str(Path(d) / MANIFEST), manifest)
                mlu.client(tracking).log_artifacts(run_id, d)
            mlu.end_run(tracking, run_id, "FINISHED")
    except BaseException:
        if run_id:
            with contextlib.suppress(Exception):
                mlu.end_run(tracking, run_id, "FAILED")
        raise
    return manifest


# --------------------------------------------------------------------------- CLI


def _json_arg(text: str | None, what: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TrainStepError(f"{what}: not valid JSON ({e}): {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m components.train --help``."""
    p = argparse.ArgumentParser(prog="python -m components.train", description=__doc__.split("\n")[0])
    p.add_argument("--data-uri", required=True, help="preprocess output (local path or s3://)")
    p.add_argument("--output-uri", required=True, help="where model.pt, config.yaml, manifest go")
    p.add_argument("--framework", default="cyclegan")
    p.add_argument("--preset", default="demo", help="demo | full | tiny (ignored with --config-uri)")
    p.add_argument("--task", default="mr2ct", help="gan_core.tasks name (ignored with --config-uri)")
    p.add_argument("--config-uri", help="YAML TrainConfig, e.g. the tune step's best_config.yaml")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="config override, repeatable: --set loss.l1=50 --set data.batch_size=8")
    p.add_argument("--steps", type=int, help="total training iterations (overrides the config)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--resources-per-worker", help='JSON, e.g. \'{"CPU": 4, "GPU": 1}\'')
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default ${mlu.TRACKING_ENV})")
    p.add_argument("--experiment", default="medgan")
    p.add_argument("--run-name", help="Ray/MLflow run name (default: derived from --output-uri)")
    p.add_argument("--ray-address", help="Ray cluster address (default $RAY_ADDRESS or a local Ray)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = run_train(a.data_uri, a.output_uri, framework=a.framework, preset=a.preset, task=a.task,
                      config_uri=a.config_uri, overrides=parse_set(a.overrides),
                      num_workers=a.num_workers, use_gpu=a.use_gpu,
                      resources_per_worker=_json_arg(a.resources_per_worker, "--resources-per-worker"),
                      max_failures=a.max_failures, tracking_uri=a.tracking_uri,
                      experiment=a.experiment, run_name=a.run_name, steps=a.steps,
                      ray_address=a.ray_address)
    except (TrainStepError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: m[k] for k in ("mlflow_run_id", "val_mae", "steps", "images_per_s",
                                        "ray_storage_path")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
