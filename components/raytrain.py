"""Ray Train plumbing shared by the ``train`` and ``tune`` steps.

* :func:`ray_session` connects to ``address`` / ``$RAY_ADDRESS`` or starts a local Ray;
  :func:`ray_storage` turns a folder / ``s3://`` URI into Ray's ``storage_path`` +
  ``storage_filesystem``; :func:`ray_run_name` derives a stable run name from the output URI
  (rerun = resume).
* :func:`fit` builds and fits one ``TorchTrainer`` (gloo on CPU, NCCL on GPU) over
  :func:`train_loop_per_worker`, the worker: it gets the shards (:func:`components.step.local_dir`
  of each split URI, laid out as ``train/`` + ``val/`` for ``gan_core.engine.train``), resumes
  from ``ray.train.get_checkpoint()`` when Ray restarts it and runs gan_core's one training loop
  with each net wrapped by ``ray.train.torch.prepare_model`` (DDP).
* Progress: rank 0 prints ``<framework> progress: step n/total (p%), x steps/s, ETA h:mm:ss``
  at most every 10 s (:class:`components.progress.Progress`, at log steps) instead of Ray's
  per-report "Reporting training result N" lines (silenced in the workers).
* Reporting (:class:`_Reporter`): at gan_core's report steps (log steps ``log_every_s`` apart,
  checkpoints, the last step) all ranks ``ray.train.report`` their metrics; at checkpoint steps
  rank 0 attaches gan_core's ``checkpoint.pt`` (+ its step). A report's cost is bounded by how
  often it comes, not by this code: Ray Train (V2) keeps ONE unconsumed report per worker and
  its controller takes one per poll (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, default 2 s), so a
  report less than a poll after the previous one blocks the loop until the next poll (measured:
  1.6 s mean, up to 3.8 s, reporting every 2 tiny steps). ``log_every_s`` above the poll
  interval (e.g. 10 s) keeps ``ray.train.report`` from ever waiting.
* MLflow stays off the loop's critical path: rank 0 hands the losses to a
  :class:`components.mlflow_utils.AsyncLogger` (a background thread; batched ``log_batch``
  calls, in order; flushed and joined when training ends or fails, and a logging failure is
  raised then). Every ``sample_every_s`` seconds (and at the last step) a PNG grid
  ``input | output | target`` is made from the LIVE framework: the forward pass on the loop's
  thread (no checkpoint is reloaded, the global RNG is left untouched), the drawing
  (:func:`draw_samples`) and upload on the logger's thread.
* At the end rank 0 writes the final inference model (``model.pt`` with ``val_mae`` and
  ``step``) to ``export_uri`` and returns ``steps, val_mae, images_per_s, ...`` as the run's
  ``Result.return_value``: the driver publishes that file and those numbers as they are.
* Checkpoint uploads do not block training: rank 0 hands each checkpoint to
  ``ray.train.report(checkpoint_upload_mode=ASYNC)``; Ray uploads it from a background thread
  (one at a time, in order) and commits it once every rank reported that step, while the loop
  goes on. The worker waits for pending uploads only when its training function returns.
* Data: each worker reads the ``train`` and ``val`` splits and nothing else (never ``test``),
  through :func:`components.step.local_dir`: an ``s3://`` split is downloaded once per NODE
  (a file-locked cache shared by the workers of that node). The split, not the subject, is the
  unit because of the sampler: :class:`gan_core.data.shards.InfiniteSampler` gives rank ``r``
  the positions ``r, r+W, ...`` of a fresh permutation of ALL slices of the split each epoch
  (that is what makes ``W`` workers x batch ``b`` see exactly the samples of 1 worker x ``W*b``
  and a resumed run the batches of an uninterrupted one), so within one epoch every rank reads
  slices of every subject. Per-rank subject subsets would change the sample stream.
* Fault injection for tests: ``$MEDGAN_FAULT_KILL="<rank>:<step>:<marker file>"`` (:data:`FAULT_ENV`)
  makes that worker SIGKILL itself once at that log step, after Ray committed the earlier
  checkpoints. ``WorkerConfig.fault`` may also select the worker by ``node_id`` and use
  ``action="hold"`` (block until killed from outside, e.g. its whole node) or carry
  ``upload_delay_s`` + ``upload_log`` (each checkpoint upload sleeps first and logs its
  start/end; every report is logged too: proof that steps go on while an upload is slow).

Example:
    >>> spec = worker_config(step.build_config("pix2pix", "tiny"),           # doctest: +SKIP
    ...                      {"train": "prep/shards/train", "val": "prep/shards/val"},
    ...                      export_uri="out/.export/run1")
    >>> with ray_session():                                                 # doctest: +SKIP
    ...     result = fit(spec, name="run1", store=ray_storage("out/ray"), num_workers=2)
    >>> result.return_value["val_mae"]                                      # doctest: +SKIP
    142.7
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

from components import mlflow_utils as mlu
from components import storage
from components.progress import Progress
from components.step import StepInputError, local_dir
from gan_core.config import TrainConfig
from gan_core.presets import from_dict
from gan_core.engine import CHECKPOINT, MODEL

__all__ = ["RAY_DIR", "FAULT_ENV", "CKPT_META", "WorkerConfig", "worker_config", "fault_from_env",
           "ray_run_name", "ray_storage", "ray_session", "ray_uri", "sample_inputs", "sample_rows",
           "draw_samples", "sample_figure", "train_loop_per_worker", "fit"]

log = logging.getLogger(__name__)

#: Folder (relative to a step's output) that is the Ray ``RunConfig.storage_path``.
RAY_DIR = "ray"
#: Test hook: ``"<rank>:<step>:<marker file>"`` (see the module doc).
FAULT_ENV = "MEDGAN_FAULT_KILL"
#: Written next to ``checkpoint.pt`` in each Ray checkpoint: ``{"step": n}``.
CKPT_META = "medgan_checkpoint.json"


class WorkerConfig(TypedDict):
    """``train_loop_config`` of :func:`train_loop_per_worker` (build it with :func:`worker_config`)."""

    config: dict[str, Any]             # TrainConfig.to_dict()
    shards: dict[str, str | None]      # split -> URI: "train" (required), "val" (or None)
    mlflow: dict[str, str] | None      # {"tracking_uri", "run_id"}: rank 0 logs to that run
    fault: dict[str, Any] | None       # parsed FAULT_ENV, or a test's dict (see the module doc)
    export_uri: str | None             # rank 0 writes the final model.pt here


def worker_config(cfg: TrainConfig, shards: dict[str, str | None], *,
                  tracking_uri: str | None = None, run_id: str | None = None,
                  fault: dict[str, Any] | None = None,
                  export_uri: str | None = None) -> WorkerConfig:
    """The worker's config; MLflow logging is on when both ``tracking_uri`` and ``run_id`` are set."""
    if not shards.get("train"):
        raise StepInputError(f"shards: a 'train' URI is required, got {shards!r}")
    ml = {"tracking_uri": tracking_uri, "run_id": run_id} if tracking_uri and run_id else None
    return {"config": cfg.to_dict(), "shards": dict(shards), "mlflow": ml, "fault": fault,
            "export_uri": export_uri}


def fault_from_env() -> dict[str, Any] | None:
    """The parsed :data:`FAULT_ENV` (None when unset)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        rank, step, marker = spec.split(":", 2)
        return {"rank": int(rank), "step": int(step), "marker": marker, "action": "kill"}
    except ValueError:
        raise StepInputError(f"{FAULT_ENV}={spec!r}: expected '<rank>:<step>:<marker file>'") from None


# --------------------------------------------------------------------------- driver side


def ray_run_name(output_uri: str, run_name: str | None = None, prefix: str = "train") -> str:
    """Stable Ray run name: ``run_name`` or ``<prefix>-<hash of output_uri>`` (rerun = resume).

    >>> ray_run_name("s3://b/runs/r1") == ray_run_name("s3://b/runs/r1/")
    True
    """
    if run_name:
        return run_name
    digest = hashlib.sha256(str(output_uri).rstrip("/").encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


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


def ray_uri(output_uri: str, path: str) -> str:
    """A path Ray reports (e.g. a checkpoint's) as a URI: Ray drops ``s3://`` when given an
    explicit filesystem."""
    if storage.is_s3(output_uri) and not str(path).startswith("s3://"):
        return f"s3://{str(path).lstrip('/')}"
    return str(path)


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


def fit(spec: WorkerConfig, *, name: str, store: tuple[str, Any], num_workers: int = 1,
        use_gpu: bool = False, resources_per_worker: dict[str, float] | None = None,
        max_failures: int = 2, num_to_keep: int = 2, callbacks: Sequence[Any] = ()) -> Any:
    """Fit one ``TorchTrainer`` running :func:`train_loop_per_worker` with ``spec``; returns
    Ray's ``Result`` (``return_value``: rank 0's summary). ``store``: :func:`ray_storage`'s
    pair. Needs a Ray session (:func:`ray_session`, or inside a Tune trial)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, filesystem = store
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=dict(spec),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            callbacks=list(callbacks) or None,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep)))
    return trainer.fit()


# --------------------------------------------------------------------------- worker side


#: One row of a sample figure: ``(image, title, (vmin, vmax))`` per panel.
SampleRow = list[tuple[Any, str, tuple[float, float]]]


def sample_inputs(fw: Any, val_dir: str | Path, n: int = 3) -> list[dict[str, Any]]:
    """Up to ``n`` val slices spread over the split (``{"A": tensor, "B": tensor}``), read once."""
    import numpy as np

    from gan_core.data.shards import SliceDataset
    from gan_core.tasks import build_task

    task = build_task(fw.cfg.task)
    ds = SliceDataset(val_dir, min_body_fraction=0.2, task=task,
                      image_size=fw.cfg.data.image_size if task.in_channels == 0 else None)
    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    return [{"A": ds[int(i)]["A"], "B": ds[int(i)]["B"]} for i in idx]


def sample_rows(fw: Any, samples: list[dict[str, Any]]) -> list[SampleRow]:
    """The panels ``input | output | target`` (CT in HU) of each sample, generated by the LIVE
    ``fw`` (a forward pass; numpy copies out, nothing shared with the networks). ``fw`` is put in
    eval mode (callers restore train mode)."""
    import numpy as np

    from gan_core.data.normalize import unit_to_ct
    from gan_core.engine import translate_slices
    from gan_core.tasks import build_task

    fw.train(False)
    task = build_task(fw.cfg.task)
    show = ((lambda x: unit_to_ct(x), (-1000, 2000), " (HU)") if task.target == "ct"
            else (lambda x: x, (-1, 1), ""))
    rows = []
    for s in samples:
        pred = translate_slices(fw, s["A"][None])[0, 0].float().numpy()
        a = s["A"].float().numpy()
        a_img = (a.argmax(0) / max(a.shape[0] - 1, 1) * 2 - 1 if a.shape[0] > 1
                 else a[0] if a.shape[0] == 1 else np.full(pred.shape, -1.0))
        rows.append([(a_img, f"input ({task.source or 'noise'})", (-1, 1)),
                     (show[0](pred), f"output{show[2]}", show[1]),
                     (show[0](s["B"][0].float().numpy()), f"{task.target}{show[2]}", show[1])])
    return rows


def draw_samples(rows: list[SampleRow], path: str | Path) -> Path:
    """Draw ``rows`` as a PNG grid at ``path`` (matplotlib's object API: safe off the main
    thread, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.6 * len(rows)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for row, panels in enumerate(rows):
        for ax, (img, title, (lo, hi)) in zip(axes[row], panels):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path


def sample_figure(fw: Any, val_dir: str | Path, path: str | Path, n: int = 3) -> Path:
    """PNG grid, one row per val slice: input | output | target (CT shown in HU); unconditional
    synthesis: a row of samples. ``fw`` is put in eval mode (callers restore train mode)."""
    return draw_samples(sample_rows(fw, sample_inputs(fw, val_dir, n)), path)


def _log_figure(rows: list[SampleRow], step: int) -> Any:
    """An :class:`~components.mlflow_utils.AsyncLogger` task: draw ``rows`` and log the PNG as
    the run's artifact ``samples/step_<step>.png``."""

    def task(c: Any, run_id: str) -> None:
        with tempfile.TemporaryDirectory(prefix="medgan-samples-") as d:
            png = draw_samples(rows, Path(d) / f"step_{step:07d}.png")
            c.log_artifact(run_id, str(png), "samples")
    return task


class _Reporter:
    """gan_core's ``report(step, metrics, checkpoint_path)`` hook inside a Ray Train worker;
    ``bind`` (gan_core's ``on_start``) hands it the live framework.

    On rank 0 with MLflow on, ``logger`` (an :class:`~components.mlflow_utils.AsyncLogger`)
    takes the metrics and the figure tasks: the loop only enqueues. A sample figure is due at a
    report once ``sample_every_s`` passed since the last one (or the start), and at the last
    step (at checkpoint steps the metrics are flushed first: a crash after a checkpoint loses
    none of the metrics up to it): the forward pass runs here, on the loop's thread; drawing, PNG and upload on the
    logger's. :meth:`close` flushes and joins the logger."""

    def __init__(self, rank: int, logger: mlu.AsyncLogger | None, val_dir: Path | None,
                 fault: dict[str, Any] | None, progress: Progress | None = None, *,
                 total_steps: int = 0, sample_every_s: float = 0.0,
                 clock: Any = time.monotonic) -> None:
        self.rank, self.logger, self.val_dir, self.fault = rank, logger, val_dir, fault
        self.progress = progress  # rank 0 only
        self.total_steps, self.sample_every_s, self.clock = total_steps, sample_every_s, clock
        self.t_sample = clock()
        self.samples: list[dict[str, Any]] | None = None  # val inputs, read once
        self.fw: Any = None

    def bind(self, fw: Any) -> None:
        self.fw = fw

    def close(self, raise_errors: bool = True) -> None:
        """Flush and join the MLflow logger; :class:`~components.mlflow_utils.LoggingError`
        if metrics were lost (and ``raise_errors``)."""
        if self.logger is not None:
            self.logger.close(raise_errors=raise_errors)

    def _maybe_die(self, step: int) -> None:
        f = self.fault
        if not f or f.get("step") != step or os.path.exists(f["marker"]):
            return
        import ray

        if "node_id" in f:
            if f["node_id"] != ray.get_runtime_context().get_node_id():
                return
        elif f.get("rank") != self.rank:
            return
        import ray.train

        # stop between checkpoints: wait until Ray has committed every earlier report (a
        # report is committed only once the controller has polled it from all ranks)
        done = ray.train.get_all_reported_checkpoints(timeout_s=60)
        steps = [int(c.metrics.get("step", -1)) for c in done]
        action = f.get("action", "kill")
        tmp = f"{f['marker']}.tmp"
        Path(tmp).write_text(json.dumps({"rank": self.rank, "step": step, "action": action,
                                         "committed_steps": steps}) + "\n")
        os.rename(tmp, f["marker"])  # the test polls for it: appears complete
        if action == "hold":  # killed from outside (its node) while blocked here
            while True:
                time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    def _log(self, event: dict[str, Any]) -> None:
        """Test hook: one JSON line per report / upload to ``fault["upload_log"]``."""
        f = self.fault
        if f and f.get("upload_log"):
            with open(f["upload_log"], "a") as fh:
                fh.write(json.dumps({"rank": self.rank, "t": time.time(), **event}) + "\n")

    def _upload_fn(self, step: int) -> Any:
        """Ray's default upload, delayed by ``fault["upload_delay_s"]`` (test hook), or None."""
        f = self.fault
        if not (f and f.get("upload_delay_s")):
            return None

        def upload(ck: Any, name: str) -> Any:
            import ray.train

            self._log({"event": "upload_start", "step": step})
            time.sleep(float(f["upload_delay_s"]))
            out = ray.train.get_context().get_storage().persist_current_checkpoint(ck, name)
            self._log({"event": "upload_end", "step": step})
            return out
        return upload

    def _sample_due(self, step: int) -> bool:
        if not (self.logger and self.val_dir is not None and self.fw is not None):
            return False
        return step >= self.total_steps or self.clock() - self.t_sample >= self.sample_every_s

    def _log_samples(self, step: int) -> None:
        """The forward pass here (RNG untouched, train mode restored); the rest on the logger."""
        import torch

        fw = self.fw
        self.t_sample = self.clock()
        try:
            devices = [fw.device] if getattr(fw.device, "type", "cpu") == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                if self.samples is None:
                    self.samples = sample_inputs(fw, self.val_dir)
                rows = sample_rows(fw, self.samples)
        except Exception as e:  # noqa: BLE001 - a figure must never stop training
            log.warning("could not draw sample images at step %d: %s", step, e)
            return
        finally:
            fw.train(True)
        self.logger.submit(_log_figure(rows, step), what=f"sample figure of step {step}")

    def __call__(self, step: int, metrics: dict[str, float], ckpt: Path | None) -> None:
        import ray.train

        self._maybe_die(step)
        out = {k: float(v) for k, v in metrics.items()}
        out["step"] = step
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in out.items() if k != "step"}, step=step)
            if ckpt is not None:  # a run resumed from this checkpoint has every metric up to it
                self.logger.flush()
        self._log({"event": "report", "step": step})
        if self.progress is not None:
            self.progress.update(step)
        if self.rank == 0 and self._sample_due(step):
            self._log_samples(step)
        if ckpt is not None and self.rank == 0:
            from ray.train import CheckpointUploadMode

            # Ray uploads from its own thread and removes the folder afterwards: a fresh one
            d = Path(tempfile.mkdtemp(prefix="medgan-ckpt-"))
            try:
                os.link(ckpt, d / CHECKPOINT)  # gan_core replaces the file, never edits it
            except OSError:
                shutil.copy2(ckpt, d / CHECKPOINT)
            (d / CKPT_META).write_text(json.dumps({"step": step}))
            ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(str(d)),
                             checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                             delete_local_checkpoint_after_upload=True,
                             checkpoint_upload_fn=self._upload_fn(step))
        else:
            ray.train.report(out)


def _data_dir(shards: dict[str, str | None], root: Path) -> Path:
    """``root/train`` (+ ``root/val``) linked to the local copies of the split URIs."""
    root.mkdir(parents=True)
    for split in ("train", "val"):
        if shards.get(split):
            (root / split).symlink_to(local_dir(str(shards[split])).resolve(), target_is_directory=True)
    return root


def _export(fw: Any, export_uri: str, extra: dict[str, Any]) -> None:
    """Rank 0: the final inference model to ``<export_uri>/model.pt``."""
    from gan_core.engine import save_model

    with tempfile.TemporaryDirectory(prefix="medgan-export-") as d:
        save_model(fw, Path(d) / MODEL, extra)
        storage.upload_dir(d, export_uri)


def _node_ids(world: int) -> list[str]:
    """The Ray node id of every rank, in rank order (a collective: all ranks call it)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [me]
    import torch.distributed as dist

    ids: list[Any] = [None] * world
    dist.all_gather_object(ids, me)
    return [str(i) for i in ids]


def _quiet_ray_reports() -> None:
    """Ray Train logs "Reporting training result N: ..." at INFO for every report of every
    rank; the rank-0 :class:`~components.progress.Progress` line replaces it (Ray's warnings
    stay). The logger is named after Ray's private module file; if that moves, nothing changes."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: WorkerConfig) -> dict[str, Any]:
    """Ray Train worker: resume from the Ray checkpoint if any, then ``gan_core.engine.train``.

    Returns (rank 0's value reaches ``Result.return_value``) ``steps, seconds, images_per_s,
    val_mae, resumed_from, world_size, node_ids`` (the Ray node of each rank, in rank order);
    rank 0 also writes ``<export_uri>/model.pt``.
    """
    import ray.train
    import ray.train.torch

    from gan_core.engine import train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = from_dict(config["config"])
    ml = config.get("mlflow")
    work = Path(tempfile.mkdtemp(prefix=f"medgan-worker{rank}-"))
    try:
        data = _data_dir(config["shards"], work / "data")
        val_dir = data / "val" if (data / "val").is_dir() else None
        resume, start = None, 0
        ck = ray.train.get_checkpoint()
        if ck is not None:
            d = Path(ck.to_directory(str(work / "resume")))
            resume = d / CHECKPOINT
            if not resume.exists():
                raise RuntimeError(f"Ray checkpoint {ck.path} holds no {CHECKPOINT}")
            start = int(json.loads((d / CKPT_META).read_text())["step"]) if (d / CKPT_META).exists() else -1
        _quiet_ray_reports()
        progress = Progress(cfg.total_steps, label=cfg.framework) if rank == 0 else None
        logger = mlu.AsyncLogger(ml["tracking_uri"], ml["run_id"]) if rank == 0 and ml else None
        reporter = _Reporter(rank, logger, val_dir, config.get("fault"), progress,
                             total_steps=cfg.total_steps, sample_every_s=cfg.sample_every_s)
        try:
            if logger is not None:
                logger.log_metrics({"resume_step": start, "world_size": world}, step=max(start, 0))
            res = train(cfg, data, work / "run", device=ray.train.torch.get_device(), rank=rank,
                        world_size=world, wrap=ray.train.torch.prepare_model, report=reporter,
                        resume_from=resume, progress=False, on_start=reporter.bind)
        except BaseException:
            reporter.close(raise_errors=False)  # what was queued still reaches MLflow
            raise
        reporter.close()  # every metric is in MLflow before the model is exported
        if rank == 0 and config.get("export_uri"):
            _export(reporter.fw, str(config["export_uri"]), {"val_mae": res.val_mae, "step": res.steps})
        return {"steps": res.steps, "seconds": res.seconds, "images_per_s": res.images_per_s,
                "val_mae": res.val_mae, "resumed_from": start, "world_size": world,
                "node_ids": _node_ids(world)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
