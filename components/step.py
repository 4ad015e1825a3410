"""What every pipeline step (ingest, preprocess, tune, train, evaluate, register) shares.

A step is a plain function ``run_<step>(...) -> manifest`` plus a CLI. This module is the one
place for the plumbing they all need:

* **Errors and exit codes.** Bad input raises :class:`StepInputError` (a ``ValueError``) whose
  message names the file or field and what was expected. The CLI (:func:`run_cli`) exits

  ====  ===========================================================================
  0     success (a one-line JSON summary on stdout)
  2     bad input: :class:`StepInputError`, or an argparse usage error
  1     any other (unexpected) failure; the traceback goes to stderr
  ====  ===========================================================================

* **Typed params.** Each step declares a frozen dataclass of its parameters; field metadata
  (:func:`arg`) carries the CLI help and flag details, :func:`params_parser` builds the
  argparse parser from it and :func:`params_from_args` turns the parsed arguments back into it.
* **The upstream manifest contract.** Every step writes ``<output>/manifest.json``
  (:data:`MANIFEST`, built by :func:`step_manifest`: step, inputs, params, outputs, timings,
  code_version, git_commit). The next step reads it with :func:`read_manifest` (one reader;
  errors name the file, the field and the expected step) and takes the paths of its inputs
  FROM it (:meth:`Manifest.output_uri`, :func:`shard_uris`), never rebuilding a layout.
* **Local copies.** :func:`local_dir` (a folder, or a per-node cache of an ``s3://`` prefix
  filled once under a file lock) and :func:`local_file` (one file, temporary).
* **Staged outputs.** :func:`staged` publishes ``<output>`` atomically
  (``components.storage.staged_output``), optionally carrying sub-folders of the previous output
  (Ray's run folder, so a rerun resumes).
* **The TrainConfig of a run.** :func:`build_config` (preset or YAML, ``--set`` overrides,
  ``--steps``) with the one ``--steps`` rule ``gan_core.presets.with_total_steps`` (keeps the constant/decay
  learning-rate ratio).

MLflow runs are opened with :func:`components.mlflow_utils.tracked_run` (ended FINISHED or
FAILED; credentials never logged: :func:`components.mlflow_utils.redact_uri`).

Example (a whole step)::

    @dataclass(frozen=True)
    class CountParams:
        data_uri: str = arg("preprocess output (folder or s3://)")
        output_uri: str = arg("where manifest.json goes")
        split: str = arg("which split", default="train")

    def run_count(data_uri: str, output_uri: str, **kw: Any) -> dict[str, Any]:
        p = CountParams(data_uri, output_uri, **kw)
        prep = read_manifest(p.data_uri, "preprocess", required=("splits",))
        n = sum(1 for _ in local_dir(shard_uris(prep, (p.split,))[p.split]).iterdir())
        m = step_manifest("count", inputs={"data_uri": p.data_uri}, params=asdict(p),
                          outputs={}, n=n)
        with staged(p.output_uri) as d:
            write_manifest(d, m)
        return m

    def main(argv: list[str] | None = None) -> int:
        parser = params_parser(CountParams, "python -m components.count", "Count shard files.")
        return run_cli(parser, lambda a: run_count(**vars(a)), argv, summary=("n",))
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import gan_core
from components import storage

if typing.TYPE_CHECKING:
    from gan_core.config import TrainConfig

__all__ = ["MANIFEST", "StepInputError", "arg", "params_parser", "params_from_args", "run_cli",
           "Manifest", "read_manifest", "shard_uris", "local_dir", "local_file", "staged",
           "write_manifest", "code_info", "step_manifest", "finite_or_none", "json_safe",
           "build_config"]

log = logging.getLogger(__name__)

#: Name of every step's manifest inside its output.
MANIFEST = "manifest.json"
#: Environment variable naming the per-node cache of :func:`local_dir`.
CACHE_ENV = "MEDGAN_CACHE_DIR"


class StepInputError(ValueError):
    """Bad input to a step (manifest, file, argument); the message names it. CLI exit code 2."""


# --------------------------------------------------------------------------- params and CLI


def arg(help: str, *, default: Any = dataclasses.MISSING, flag: str | None = None,
        parse: Callable[[str], Any] | None = None, append: bool = False,
        convert: Callable[[Any], Any] | None = None, choices: Sequence[Any] | None = None,
        metavar: str | None = None) -> Any:
    """A params-dataclass field with its CLI description.

    ``flag``: the option (default ``--field-name``; for a bool defaulting to True give the
    ``--no-...`` flag). ``parse``: turns one CLI string into a value (argparse ``type``).
    ``append``: repeatable option collected in a list. ``convert``: applied to the parsed CLI
    value before the dataclass is built (e.g. ``KEY=VALUE`` strings to a dict); a ``ValueError``
    it raises becomes a :class:`StepInputError` naming the flag.

    >>> @dataclass(frozen=True)
    ... class P:
    ...     n: int = arg("how many", default=2)
    >>> P().n, dataclasses.fields(P)[0].metadata["help"]
    (2, 'how many')
    """
    meta = {"help": help, "flag": flag, "parse": parse, "append": append, "convert": convert,
            "choices": choices, "metavar": metavar}
    if isinstance(default, (list, dict, set)):
        raise TypeError("arg(): use an immutable default (tuple, None)")
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> Any:
    """``X`` from ``X | None`` / ``Optional[X]``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def params_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the params dataclass ``cls``.

    Fields without a default are required options. ``bool`` fields are switches.

    >>> @dataclass(frozen=True)
    ... class P:
    ...     data_uri: str = arg("input")
    ...     steps: int | None = arg("iterations", default=None)
    ...     use_gpu: bool = arg("use GPUs", default=False)
    >>> a = params_parser(P, "x", "demo").parse_args(["--data-uri", "d", "--steps", "3"])
    >>> params_from_args(P, a)
    P(data_uri='d', steps=3, use_gpu=False)
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        m = f.metadata
        tp = _base_type(hints[f.name])
        flag = m.get("flag") or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "help": m.get("help")}
        if tp is bool and not m.get("parse"):
            kw["action"] = "store_false" if f.default is True else "store_true"
            kw["default"] = bool(f.default)
            parser.add_argument(flag, **kw)
            continue
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = None if m.get("append") else f.default
        if m.get("parse"):
            kw["type"] = m["parse"]
        elif tp in (int, float, str):
            kw["type"] = tp
        if m.get("append"):
            kw["action"] = "append"
        for key in ("choices", "metavar"):
            if m.get(key) is not None:
                kw[key] = m[key]
        parser.add_argument(flag, **kw)
    return parser


def params_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The params dataclass ``cls`` from parsed CLI ``args`` (``convert`` hooks applied)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        conv = f.metadata.get("convert")
        if f.metadata.get("append") and v is None:
            v = f.default if conv is None else conv(None)
        elif conv is not None:
            try:
                v = conv(v)
            except StepInputError:
                raise
            except ValueError as e:
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                raise StepInputError(f"{flag}: {e}") from None
        values[f.name] = v
    return cls(**values)


def run_cli(parser: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], dict[str, Any]],
            argv: Sequence[str] | None = None, *, summary: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run ``fn(args)`` and map the outcome to the exit code (module doc).

    ``fn`` returns the step's manifest; ``summary`` picks the keys printed as JSON (all when
    None).

    >>> p = argparse.ArgumentParser(prog="demo"); _ = p.add_argument("--n", type=int)
    >>> def fn(a):
    ...     if a.n < 0:
    ...         raise StepInputError(f"--n: expected >= 0, got {a.n}")
    ...     return {"n": a.n}
    >>> run_cli(p, fn, ["--n", "3"])
    {"n": 3}
    0
    >>> run_cli(p, fn, ["--n", "-1"])
    2
    """
    args = parser.parse_args(argv)  # a usage error exits 2 (argparse)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = fn(args)
    except StepInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the one place that turns failures into exit 1
        traceback.print_exc(file=sys.stderr)
        print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    out = result if summary is None else {k: result.get(k) for k in summary}
    print(json.dumps(json_safe(out), default=str))
    return 0


# --------------------------------------------------------------------------- manifests


def _get(d: Any, dotted: str) -> Any:
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


@dataclass(frozen=True)
class Manifest:
    """A step's manifest as read by the next step: the output folder ``uri``, the parsed
    ``data`` and the ``sha256`` of the file's bytes (provenance)."""

    uri: str
    step: str
    data: dict[str, Any]
    sha256: str

    @property
    def path(self) -> str:
        """``<uri>/manifest.json``."""
        return storage.join(self.uri, MANIFEST)

    def field(self, dotted: str) -> Any:
        """The value at ``dotted`` (``"outputs.shards.train.path"``); a missing field raises
        :class:`StepInputError` naming the file, the field and the step."""
        try:
            return _get(self.data, dotted)
        except KeyError:
            raise StepInputError(f"{self.path}: missing field {dotted!r} (expected in the "
                                 f"manifest of step {self.step!r})") from None

    def value(self, key: str) -> Any:
        """``key`` from the top level, else ``outputs``, else ``params`` (None if absent)."""
        d = self.data
        for where in (d, d.get("outputs") or {}, d.get("params") or {}):
            if isinstance(where, dict) and where.get(key) is not None:
                return where[key]
        return None

    def output_uri(self, dotted: str) -> str:
        """The URI of an output whose path the manifest records at ``dotted``, relative to the
        step's output folder (absolute paths and ``..`` are refused)."""
        rel = self.field(dotted)
        p = PurePosixPath(str(rel)) if isinstance(rel, str) and rel else None
        if p is None or p.is_absolute() or ".." in p.parts:
            raise StepInputError(f"{self.path}: field {dotted!r} = {rel!r}: expected a relative "
                                 f"path inside {self.uri}")
        return storage.join(self.uri, str(p))


def read_manifest(uri: str, step: str, required: Sequence[str] = ()) -> Manifest:
    """Read ``<uri>/manifest.json`` written by step ``step``; check the dotted ``required`` fields.

    Every problem raises :class:`StepInputError` naming the file, the field and the step.

    >>> try:
    ...     read_manifest("/nonexistent", "train")
    ... except StepInputError as e:
    ...     print(e)
    /nonexistent/manifest.json: not found (expected the output of step 'train')
    """
    path = storage.join(uri, MANIFEST)
    try:
        raw = storage.read_bytes(path)
    except storage.StorageNotFoundError:
        raise StepInputError(f"{path}: not found (expected the output of step {step!r})") from None
    except storage.StorageError as e:
        raise StepInputError(f"{path}: cannot read the manifest of step {step!r} ({e})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StepInputError(f"{path}: not valid JSON ({e}); expected the manifest of step "
                             f"{step!r}") from None
    if not isinstance(data, dict):
        raise StepInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("step") != step:
        raise StepInputError(f"{path}: field 'step' is {data.get('step')!r}, expected {step!r}")
    m = Manifest(str(uri), step, data, hashlib.sha256(raw).hexdigest())
    for key in required:
        m.field(key)
    return m


def shard_uris(prep: Manifest, splits: Sequence[str] = ("train", "val"),
               optional: Sequence[str] = ("val",)) -> dict[str, str | None]:
    """``{split: URI}`` of the shards a preprocess manifest records at
    ``outputs.shards.<split>.path`` (relative to its output). A split in ``optional`` that the
    manifest lacks maps to None; any other missing field raises :class:`StepInputError`.

    >>> m = Manifest("s3://b/prep", "preprocess", {"outputs": {"shards": {
    ...     "train": {"path": "packed/train"}}}}, "")
    >>> shard_uris(m)
    {'train': 's3://b/prep/packed/train', 'val': None}
    """
    shards = prep.field("outputs.shards")
    if not isinstance(shards, dict):
        raise StepInputError(f"{prep.path}: field 'outputs.shards' must map splits to "
                             f"{{'path': ...}}, got {shards!r:.200}")
    out: dict[str, str | None] = {}
    for split in splits:
        if split not in shards and split in optional:
            out[split] = None
            continue
        out[split] = prep.output_uri(f"outputs.shards.{split}.path")
    return out


def training_data(prep: Manifest, cfg: "TrainConfig", unpaired: bool = False
                  ) -> tuple[dict[str, str | None], "TrainConfig"]:
    """The shards a train / tune step trains on (``{"train": URI, "val": URI|None}``) and its
    config. ``unpaired``: the preprocess output's unpaired training set
    (``outputs.shards.train_unpaired``, written by ``preprocess --unpaired``) instead of the
    paired one. A config whose loss needs the target domain's tissue statistics
    (``loss.tissue_value``, ``loss.segment_consistency``) and has none gets them from the
    output's ``outputs.unpaired.ct_tissue_stats`` file. Errors name the field that is missing."""
    from gan_core.data.unpaired import needs_target_stats, with_target_stats
    from gan_core.frameworks import get_framework

    shards = shard_uris(prep)
    if unpaired and get_framework(cfg.framework).paired:
        raise StepInputError(f"unpaired: framework {cfg.framework!r} trains on MR/CT pairs, and "
                             "the unpaired set pairs the MR of one subject with the CT of another; "
                             "use cyclegan or unit")
    if unpaired:
        if not isinstance(prep.data.get("outputs", {}).get("shards", {}).get("train_unpaired"), dict):
            raise StepInputError(f"{prep.path}: unpaired training needs "
                                 "'outputs.shards.train_unpaired': run preprocess with --unpaired")
        shards["train"] = prep.output_uri("outputs.shards.train_unpaired.path")
    if needs_target_stats(cfg):
        stats = (prep.data.get("outputs", {}).get("unpaired") or {}).get("ct_tissue_stats")
        if not stats:
            raise StepInputError(f"{prep.path}: the loss needs the CT domain's tissue statistics "
                                 "(loss.tissue_value / loss.segment_consistency) and "
                                 "'outputs.unpaired.ct_tissue_stats' is missing: run preprocess "
                                 "with --unpaired on subjects with tissue labels")
        with local_file(prep.output_uri("outputs.unpaired.ct_tissue_stats")) as f:
            try:
                cfg = with_target_stats(cfg, f)
            except ValueError as e:
                raise StepInputError(str(e)) from None
    return shards, cfg


# --------------------------------------------------------------------------- local copies


def local_dir(uri: str) -> Path:
    """A local folder with the files at ``uri``: the folder itself, or (``s3://``) a per-node
    cache ``$MEDGAN_CACHE_DIR|<tmp>/medgan-shards/<hash>`` downloaded once under a file lock
    (shared by the processes of a node; do not modify it).

    >>> local_dir(tempfile.gettempdir()) == Path(tempfile.gettempdir())
    True
    """
    if not storage.is_s3(uri):
        p = Path(uri[len("file://"):] if str(uri).startswith("file://") else uri)
        if not p.is_dir():
            raise StepInputError(f"{uri}: no such directory on this node")
        return p
    import fcntl

    root = Path(os.environ.get(CACHE_ENV) or tempfile.gettempdir()) / "medgan-shards"
    root.mkdir(parents=True, exist_ok=True)
    dest = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    with open(root / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".complete").exists():
            part = Path(tempfile.mkdtemp(prefix=f"{dest.name}.part-", dir=root))
            try:
                try:
                    storage.download_dir(uri, part)
                except storage.StorageNotFoundError as e:
                    raise StepInputError(f"{uri}: {e}") from None
                (part / ".complete").write_text(uri)
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(part, dest)
            finally:
                shutil.rmtree(part, ignore_errors=True)
    return dest


@contextlib.contextmanager
def local_file(uri: str) -> Iterator[Path]:
    """A local path of the file at ``uri`` (``s3://``: downloaded to a temporary folder removed
    on exit). A missing file raises :class:`StepInputError`."""
    if not storage.is_s3(uri):
        p = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not p.is_file():
            raise StepInputError(f"{uri}: file not found")
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="medgan-file-"))
    try:
        dst = tmp / PurePosixPath(storage.split_s3(uri)[1]).name
        try:
            dst.write_bytes(storage.read_bytes(uri))
        except storage.StorageNotFoundError:
            raise StepInputError(f"{uri}: file not found") from None
        yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- outputs


@contextlib.contextmanager
def staged(output_uri: str, keep: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty local folder; on success publish it as ``output_uri``
    (:func:`components.storage.staged_output`: atomic locally, ``_SUCCESS`` last on S3).

    ``keep``: sub-folders of the current output carried into the new one (e.g. Ray's ``ray/``
    run folder, so that a rerun resumes): renamed (local, no copy) or downloaded again (S3).
    """
    with storage.staged_output(output_uri) as d:
        yield d
        for name in keep:
            src = storage.join(output_uri, name)
            if storage.is_s3(output_uri):
                if storage.exists(src):
                    storage.download_dir(src, d / name)
            elif Path(src).is_dir():
                os.rename(src, d / name)


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as ``<folder>/manifest.json`` (strict JSON: NaN/inf become null)."""
    storage.write_json(storage.join(str(folder), MANIFEST), json_safe(manifest))


def code_info() -> dict[str, str | None]:
    """``{"gan_core": version, "git_commit": sha or None}`` (``$MEDGAN_GIT_COMMIT`` wins over git).

    >>> code_info()["gan_core"] == gan_core.__version__
    True
    """
    commit = os.environ.get("MEDGAN_GIT_COMMIT") or None
    if commit is None:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(gan_core.__file__).parent,
                                 capture_output=True, text=True, timeout=5, check=False)
            commit = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"gan_core": gan_core.__version__, "git_commit": commit}


def step_manifest(step: str, *, inputs: dict[str, Any], params: dict[str, Any],
                  outputs: dict[str, Any], timings: dict[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The manifest every step writes: ``step, inputs, params, outputs, timings, code_version,
    git_commit`` plus the step's own fields (``extra``: counts, subjects, ...).

    >>> m = step_manifest("demo", inputs={}, params={"n": 1}, outputs={}, counts={"n": 1})
    >>> sorted(m)
    ['code_version', 'counts', 'git_commit', 'inputs', 'outputs', 'params', 'step', 'timings']
    """
    code = code_info()
    return {"step": step, "inputs": inputs, "params": params, "outputs": outputs, **extra,
            "timings": timings or {}, "code_version": code["gan_core"],
            "git_commit": code["git_commit"]}


def finite_or_none(x: Any) -> float | None:
    """A float for JSON/MLflow, or None for NaN/inf/non-numbers.

    >>> finite_or_none(1), finite_or_none(float("inf")), finite_or_none("x")
    (1.0, None, None)
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, recursively (manifests are strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- the run's config


def build_config(framework: str = "cyclegan", preset_name: str = "demo",
                 config_uri: str | None = None, overrides: dict[str, Any] | None = None,
                 steps: int | None = None, task: str = "mr2ct") -> "TrainConfig":
    """The run's config: ``config_uri`` (a YAML TrainConfig, e.g. tune's ``best_config.yaml``)
    if given, else ``preset(preset_name, framework, task)``; then ``overrides``; then ``steps``
    (:func:`with_total_steps`). Errors raise :class:`StepInputError` naming what was wrong.

    >>> build_config("pix2pix", "tiny", overrides={"loss.image": 50}).loss.image
    50.0
    """

    from gan_core.presets import apply_overrides, config_from_yaml, preset, with_total_steps

    if config_uri:
        try:
            cfg = config_from_yaml(storage.read_text(config_uri))
        except storage.StorageError as e:
            raise StepInputError(f"config {config_uri}: {e}") from None
        except (ValueError, KeyError) as e:
            raise StepInputError(f"config {config_uri}: {e}") from None
    else:
        try:
            cfg = preset(preset_name, framework, task)
        except (ValueError, KeyError) as e:
            raise StepInputError(f"preset {preset_name!r} / framework {framework!r} / task "
                                 f"{task!r}: {e}") from None
    if overrides:
        try:
            cfg = apply_overrides(cfg, overrides)
        except ValueError as e:
            raise StepInputError(f"overrides: {e}") from None
    if steps is not None:
        try:
            cfg = with_total_steps(cfg, steps)
        except ValueError as e:
            raise StepInputError(str(e)) from None
    return cfg
