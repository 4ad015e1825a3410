"""The MLflow pyfunc model that serves medgan: MR (NIfTI path or 3D array) in, synthetic CT in HU out.

Two ways in, one model:

* a pandas DataFrame with, per row, either a ``path`` (a NIfTI MR file the model can read) or an
  ``mr_nifti_b64`` (the bytes of a ``.nii``/``.nii.gz`` MR file, base64: what a REST client of
  ``mlflow models serve`` sends, and the logged input example); optional ``mask_path`` for a body
  mask on the MR grid and ``output_path`` for where to write. Every row is translated into an
  int16 HU NIfTI with the MR's affine and header, written next to the MR as
  ``<stem>_sct.nii.gz`` or, with ``params={"output_dir": d}``, as
  ``<d>/<parent>_<stem>_sct.nii.gz``; a base64 row without ``output_path`` gets the result back
  as base64 (``sct_nifti_b64``) and nothing is written. The result is a DataFrame: ``path``,
  ``output_path``, ``shape``, ``hu_min``, ``hu_max``, ``hu_mean_body``, ``body_voxels``,
  ``seconds``, ``sct_nifti_b64``. This is the logged signature (a column schema + params), so
  ``mlflow.pyfunc.load_model(uri).predict(df)`` and ``mlflow models serve`` both work.
* a 3D numpy array (an MR volume, float32, (X, Y, Z)) -> the synthetic CT array (float32, HU,
  -1000 outside the body). MLflow enforces the column schema on ``PyFuncModel.predict``, so
  reach the array path through the wrapped object:
  ``mlflow.pyfunc.load_model(uri).unwrap_python_model().predict(None, volume)``.

>>> import mlflow                                                            # doctest: +SKIP
>>> m = mlflow.pyfunc.load_model("models:/medgan-sct@champion")              # doctest: +SKIP
>>> m.predict(pd.DataFrame({"path": ["sub1/mr.nii.gz"]}))["output_path"][0]  # doctest: +SKIP
'sub1/mr_sct.nii.gz'
>>> m.unwrap_python_model().predict(None, mr_volume).shape                   # doctest: +SKIP
(256, 256, 120)

Over HTTP (``mlflow models serve -m models:/medgan-sct@champion --env-manager local``), POST
``{"dataframe_split": {"columns": ["mr_nifti_b64"], "data": [["<base64 .nii/.nii.gz>"]]}}`` to
``/invocations``; ``predictions[0]["sct_nifti_b64"]`` is the synthetic CT (int16 HU NIfTI, gzip,
the MR's affine and header). A bad payload (not base64, not a NIfTI, not 3D, NaN/Inf voxels,
more than :data:`MAX_VOXELS` voxels) raises :class:`ServingInputError`, which the scoring server
answers with HTTP 400 and the message (it keeps serving).

``log_pyfunc_model`` logs it into the active MLflow run with its signature, an input example
(a tiny phantom MR as base64, self-contained in the model: never patient data, never a path
that dies with a temp dir; ``mlflow.pyfunc.load_model(uri).input_example`` predicts), explicit
pip requirements and the code it needs (``gan_core``, and this module as package
``medgan_serving``: a name that cannot shadow the caller's own ``components`` when the model is
loaded in-process, so it loads where medgan is not installed).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

__all__ = ["SyntheticCTModel", "SIGNATURE", "MODEL_ARTIFACT", "FORMAT_TAGS", "MAX_VOXELS", "SERVING_PACKAGE",
           "ServingInputError", "log_pyfunc_model", "output_path_for", "encode_nifti", "decode_nifti",
           "example_input"]

#: Key of the model.pt file in the pyfunc ``artifacts`` dict.
MODEL_ARTIFACT = "model"
#: Tags every logged model of this format carries (a logged model without them, e.g. one whose
#: input example pointed into a temp dir, is never reused by the register step).
FORMAT_TAGS = {"medgan_pyfunc_format": "3"}
#: Largest input volume (voxels, read from the NIfTI header before any voxel is decoded):
#: 512 x 512 x 512, beyond any sCT grid; a bigger (or gzip-bomb) payload is refused.
MAX_VOXELS = 512 ** 3
#: The package name this module travels under inside a logged model (``code_paths``).
SERVING_PACKAGE = "medgan_serving"


class ServingInputError(MlflowException, ValueError):
    """A bad input row (payload or path): an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``,
    so ``mlflow models serve`` answers HTTP 400 with this message, and a ``ValueError`` in-process.

    >>> ServingInputError("row 0: not a NIfTI").get_http_status_code()
    400
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec("string", "path", required=False),
        ColSpec("string", "mr_nifti_b64", required=False),
        ColSpec("string", "mask_path", required=False),
        ColSpec("string", "output_path", required=False),
    ]),
    outputs=Schema([
        ColSpec("string", "path"),
        ColSpec("string", "output_path"),
        ColSpec("string", "shape"),
        ColSpec("double", "hu_min"),
        ColSpec("double", "hu_max"),
        ColSpec("double", "hu_mean_body"),
        ColSpec("long", "body_voxels"),
        ColSpec("double", "seconds"),
        ColSpec("string", "sct_nifti_b64"),
    ]),
    params=ParamSchema([
        ParamSpec("output_dir", "string", ""),
        ParamSpec("batch_size", "long", 16),
    ]),
)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def output_path_for(mr_path: str | os.PathLike[str], output_dir: str | None = None) -> Path:
    """Where the synthetic CT of ``mr_path`` is written by default.

    >>> str(output_path_for("/data/sub1/mr.nii.gz"))
    '/data/sub1/mr_sct.nii.gz'
    >>> str(output_path_for("/data/sub1/mr.nii.gz", "/out"))
    '/out/sub1_mr_sct.nii.gz'
    """
    p = Path(mr_path)
    if output_dir:
        prefix = f"{p.parent.name}_" if p.parent.name else ""
        return Path(output_dir) / f"{prefix}{_stem(p)}_sct.nii.gz"
    return p.with_name(f"{_stem(p)}_sct.nii.gz")


def encode_nifti(path: str | os.PathLike[str]) -> str:
    """The bytes of a NIfTI file as base64 text (the ``mr_nifti_b64`` input column)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_nifti(text: str, folder: str | os.PathLike[str], stem: str = "volume") -> Path:
    """Write base64 NIfTI bytes into ``folder`` (``.nii.gz`` if gzip, else ``.nii``); returns the file.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> decode_nifti("not base64!", d)
    Traceback (most recent call last):
    ...
    ValueError: not valid base64 NIfTI bytes (...)
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not valid base64 NIfTI bytes ({exc})") from None
    path = Path(folder) / (f"{stem}.nii.gz" if raw[:2] == b"\x1f\x8b" else f"{stem}.nii")
    path.write_bytes(raw)
    return path


def _cell(row: pd.Series, key: str) -> str | None:
    """A string cell or None for a missing column / NaN / empty string."""
    if key not in row.index:
        return None
    v = row[key]
    if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    return str(v)


class SyntheticCTModel(mlflow.pyfunc.PythonModel):
    """MR -> synthetic CT (HU) with a medgan ``model.pt``; see the module docstring for the I/O.

    Outside MLflow: ``SyntheticCTModel.from_file("runs/p2p/model.pt").predict(None, df)``.
    """

    def __init__(self) -> None:
        self._fw: Any = None
        self._device: str = "cpu"

    # the loaded network never travels in the pickle that MLflow stores
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fw": None}

    @classmethod
    def from_file(cls, model_path: str | os.PathLike[str], device: str | None = None) -> "SyntheticCTModel":
        """Load ``model.pt`` directly (no MLflow context)."""
        m = cls()
        m._load(Path(model_path), device)
        return m

    def _load(self, path: Path, device: str | None) -> None:
        import torch

        from gan_core.engine import load_model

        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._fw = load_model(path, self._device)

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load ``model.pt`` from the model's artifacts (on CUDA when available)."""
        path = (context.artifacts or {}).get(MODEL_ARTIFACT)
        if not path:
            raise ValueError(f"medgan pyfunc model: artifact {MODEL_ARTIFACT!r} (model.pt) is missing "
                             f"from the logged model (artifacts: {sorted(context.artifacts or {})})")
        self._load(Path(path), None)

    def _require_loaded(self) -> Any:
        if self._fw is None:
            raise RuntimeError("SyntheticCTModel is not loaded: use mlflow.pyfunc.load_model(uri) "
                               "or SyntheticCTModel.from_file(model.pt)")
        return self._fw

    def translate_volume(self, mr: np.ndarray, mask: np.ndarray | None = None, *,
                         batch_size: int = 16) -> np.ndarray:
        """3D MR array (X, Y, Z) -> synthetic CT float32 in HU (-1000 outside the body)."""
        from gan_core.engine import translate_array

        arr = np.asarray(mr)
        if arr.ndim != 3:
            raise ValueError(f"medgan pyfunc: expected a 3D MR volume (X, Y, Z), got an array of shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"medgan pyfunc: expected a numeric MR volume, got dtype {arr.dtype}")
        return translate_array(self._require_loaded(), arr.astype(np.float32), mask, batch_size=batch_size)

    # MLflow reads this hint at class creation: pd.DataFrame means "no type-hint schema" (the
    # logged SIGNATURE is the contract); a union with np.ndarray would be rejected, so the array
    # path is documented rather than annotated.
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame | np.ndarray:
        """DataFrame (``path`` [, ``mask_path``, ``output_path``]) -> DataFrame of written files;
        3D numpy array -> synthetic CT array in HU. ``params``: ``output_dir``, ``batch_size``."""
        params = dict(params or {})
        batch_size = int(params.get("batch_size") or 16)
        if isinstance(model_input, np.ndarray):
            return self.translate_volume(model_input, batch_size=batch_size)
        if isinstance(model_input, dict):
            model_input = pd.DataFrame([model_input] if all(np.isscalar(v) for v in model_input.values())
                                       else model_input)
        if not isinstance(model_input, pd.DataFrame):
            raise ServingInputError("medgan pyfunc: expected a DataFrame with a 'path' column (NIfTI MR "
                                    f"files) or a 3D numpy array, got {type(model_input).__name__}")
        if "path" not in model_input.columns and "mr_nifti_b64" not in model_input.columns:
            raise ServingInputError("medgan pyfunc: the input DataFrame has no 'path' column "
                                    f"(columns: {list(model_input.columns)}); expected NIfTI MR file "
                                    "paths (or 'mr_nifti_b64': base64 NIfTI bytes)")
        return self._predict_files(model_input, str(params.get("output_dir") or ""), batch_size)

    def _predict_files(self, df: pd.DataFrame, output_dir: str, batch_size: int) -> pd.DataFrame:
        fw = self._require_loaded()
        rows: list[dict[str, Any]] = []
        targets: dict[str, str] = {}
        plan = []
        for i, (_, row) in enumerate(df.iterrows()):
            src, b64 = _cell(row, "path"), _cell(row, "mr_nifti_b64")
            if (src is None) == (b64 is None):
                raise ServingInputError(f"medgan pyfunc: row {i} needs exactly one of 'path' (a NIfTI "
                                        "MR file) or 'mr_nifti_b64' (base64 NIfTI bytes)"
                                        + (", got both" if src else ", got neither"))
            dst = _cell(row, "output_path")
            if dst is None and src is not None:
                dst = str(output_path_for(src, output_dir or None))
            if dst is not None:
                if dst in targets:
                    raise ServingInputError(f"medgan pyfunc: rows {targets[dst]} and {i} would both "
                                            f"write {dst}; give an 'output_path' column")
                targets[dst] = str(i)
            plan.append((i, src, b64, _cell(row, "mask_path"), dst))
        for i, src, b64, mask_src, dst in plan:
            t0 = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory(prefix="medgan-pyfunc-row-") as tmp:
                    mr_file = src if src is not None else decode_nifti(str(b64), tmp, "mr")
                    hu, body, sct_file = _translate_one(fw, mr_file, mask_src, dst or
                                                        str(Path(tmp) / "sct.nii.gz"), batch_size)
                    sct_b64 = encode_nifti(sct_file) if dst is None else ""
            except Exception as exc:
                label = src if src is not None else "mr_nifti_b64"
                cause = str(exc) if isinstance(exc, ServingInputError) else f"{type(exc).__name__}: {exc}"
                raise ServingInputError(f"medgan pyfunc: row {i} ({label}): {cause}") from exc
            rows.append({
                "path": src or "", "output_path": dst or "", "shape": "x".join(str(n) for n in hu.shape),
                "hu_min": float(hu.min()), "hu_max": float(hu.max()),
                "hu_mean_body": float(hu[body].mean()) if body.any() else float("nan"),
                "body_voxels": int(body.sum()), "seconds": time.perf_counter() - t0,
                "sct_nifti_b64": sct_b64,
            })
        return pd.DataFrame(rows, columns=[c.name for c in SIGNATURE.outputs.inputs])


def _translate_one(fw: Any, mr_file: str | os.PathLike[str], mask_src: str | None, dst: str,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, Path]:
    """One MR file -> int16 HU NIfTI at ``dst``; returns (HU array, body mask, written file)."""
    from gan_core.data.masks import body_mask
    from gan_core.data.nifti import check_same_grid, load_volume, save_volume
    from gan_core.engine import translate_array

    _check_size(mr_file)
    mr = load_volume(mr_file, name="MR")
    mask = None
    if mask_src is not None:
        mvol = load_volume(mask_src)
        check_same_grid(mr, mvol, names=("MR", "mask"))
        mask = mvol.array
    mask = body_mask(mr.array) if mask is None else (mask > 0).astype(np.uint8)
    hu = translate_array(fw, mr.array, mask, batch_size=batch_size)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    written = save_volume(dst, np.round(hu).astype(np.int16), like=mr, dtype=np.int16)
    return hu, mask > 0, Path(written)


def _check_size(mr_file: str | os.PathLike[str]) -> None:
    """Refuse a NIfTI whose header declares more than :data:`MAX_VOXELS` voxels (before reading
    any voxel: a small gzip payload can declare a huge volume)."""
    import nibabel as nib

    try:
        shape = tuple(int(n) for n in nib.load(str(mr_file)).shape)
    except Exception:  # noqa: BLE001 - not a NIfTI: load_volume reports it, naming file and cause
        return
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise ServingInputError(f"MR volume of shape {shape} has {n} voxels, more than the "
                                f"{MAX_VOXELS} (512^3) this model accepts")


def _requirements() -> list[str]:
    """Pinned pip requirements of the served model (no local version suffixes like +cpu)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "torch", "numpy", "pandas", "scipy", "scikit-image", "nibabel", "pyyaml", "tqdm"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def example_input() -> pd.DataFrame:
    """The logged input example: a tiny phantom MR (16x16x16, never patient data) as base64
    NIfTI bytes in column ``mr_nifti_b64``: self-contained, so it predicts wherever the model
    is loaded.

    >>> example_input().columns.tolist()
    ['mr_nifti_b64']
    """
    from gan_core.data.nifti import save_volume
    from gan_core.data.phantom import generate_subject

    s = generate_subject(0, shape=(16, 16, 16), spacing=(12.0, 12.0, 12.0), lesion_prevalence=0.0)
    with tempfile.TemporaryDirectory(prefix="medgan-example-") as tmp:
        f = save_volume(Path(tmp) / "example_mr.nii.gz", s.mr, affine=s.affine, dtype=np.float32)
        return pd.DataFrame({"mr_nifti_b64": [encode_nifti(f)]})


def _stage_code(folder: Path) -> list[str]:
    """Copy ``gan_core`` and this module (as package :data:`SERVING_PACKAGE`) for ``code_paths``."""
    import gan_core

    src_core = Path(gan_core.__file__).parent
    dst_core = folder / "gan_core"
    # the viewer report's assets (the NiiVue bundle) are not needed to serve
    shutil.copytree(src_core, dst_core, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "viewer_assets"))
    comp = folder / SERVING_PACKAGE
    comp.mkdir()
    (comp / "__init__.py").write_text('"""medgan\'s MLflow pyfunc model, as logged with a model."""\n')
    shutil.copy2(__file__, comp / "pyfunc_model.py")
    return [str(dst_core), str(comp)]


#: The "model from code" file MLflow stores and runs at load time (no pickled objects).
_MODEL_CODE = f'''"""medgan synthetic-CT pyfunc model (MLflow model from code)."""
import mlflow

try:  # as logged: code_paths puts {SERVING_PACKAGE} on sys.path
    from {SERVING_PACKAGE}.pyfunc_model import SyntheticCTModel
except ImportError:  # in the process that logs it (MLflow loads the code to validate it)
    from components.pyfunc_model import SyntheticCTModel

mlflow.models.set_model(SyntheticCTModel())
'''


def log_pyfunc_model(model_path: str | os.PathLike[str], *, name: str = "sct_model",
                     tags: dict[str, str] | None = None) -> Any:
    """Log ``model.pt`` as a pyfunc model into the ACTIVE MLflow run; returns ``ModelInfo``.

    >>> with mlflow.start_run(run_id=run_id):                      # doctest: +SKIP
    ...     info = log_pyfunc_model("runs/p2p/model.pt")
    >>> mlflow.register_model(info.model_uri, "medgan-sct")        # doctest: +SKIP
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"log_pyfunc_model: model file not found: {model_path}")
    with tempfile.TemporaryDirectory(prefix="medgan-pyfunc-") as tmp:
        tmp_dir = Path(tmp)
        code_paths = _stage_code(tmp_dir / "code")
        model_code = tmp_dir / "sct_model.py"
        model_code.write_text(_MODEL_CODE)
        input_example = example_input()
        with warnings.catch_warnings():
            # MLflow suggests type hints on predict(); the explicit SIGNATURE is the contract here
            warnings.filterwarnings("ignore", message=".*type hints.*predict.*")
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(model_code),
                artifacts={MODEL_ARTIFACT: str(model_path)},
                code_paths=code_paths,
                signature=SIGNATURE,
                input_example=input_example,
                pip_requirements=_requirements(),
                tags={**(tags or {}), **FORMAT_TAGS},
            )
