"""The registered champion served over HTTP by a REAL ``mlflow models serve`` process: a NIfTI
no one here wrote (nibabel's own ``tests/data/anatomical.nii``) goes in as base64 bytes, the
synthetic CT NIfTI comes back as base64 bytes on the input's grid; bad payloads get HTTP 400
with a clear message and the server keeps serving."""

from __future__ import annotations

import base64
import gzip
import io
import shutil
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from components.pyfunc_model import MAX_VOXELS, SIGNATURE, SyntheticCTModel
from gan_core.data.normalize import CT_MAX, CT_MIN
from tests.model_server import ModelServer, post_nifti, register_champion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "medgan-sct-http"
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _nifti_bytes(img: nib.Nifti1Image, gz: bool = True) -> bytes:
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


@pytest.fixture(scope="module")
def champion(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny pix2pix trained a few real steps, logged and registered as ``champion`` in a
    sqlite registry."""
    from gan_core.engine import train
    from gan_core.presets import apply_overrides, preset

    root = tmp_path_factory.mktemp("serve")
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"optim.steps_constant": 2, "optim.steps_decay": 1})
    train(cfg, tiny_shards, root / "train", progress=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version = register_champion(root / "train" / "model.pt", uri, NAME, root / "artifacts")
    return {"root": root, "uri": uri, "model": root / "train" / "model.pt", "version": version}


@pytest.fixture(scope="module")
def served(champion: dict) -> Iterator[ModelServer]:
    srv = ModelServer(f"models:/{NAME}@champion", tracking_uri=champion["uri"], log_dir=champion["root"],
                      env={"OMP_NUM_THREADS": "1"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_signature_and_example_survive_logging(champion, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    assert info.signature == SIGNATURE
    assert info.signature.inputs.input_names() == ["path", "mr_nifti_b64", "mask_path", "output_path"]
    assert "sct_nifti_b64" in info.signature.outputs.input_names()
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion",
                                                     dst_path=str(champion["root"] / "dl")))
    code = sorted(p.name for p in (local / "code").iterdir())
    assert code == ["gan_core", "medgan_serving"], code  # nothing named like the caller's packages
    example = mlflow.models.Model.load(local / "MLmodel").load_input_example(str(local))
    assert list(example.columns) == ["mr_nifti_b64"]
    assert nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(example.iloc[0, 0]))).ndim == 3


def test_served_champion_translates_a_real_nifti(served, champion, tmp_path):
    src = nib.load(ANATOMICAL)
    status, body = post_nifti(served.url, ANATOMICAL.read_bytes())
    assert status == 200, body
    row = body["predictions"][0]
    sct = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(row["sct_nifti_b64"])))
    arr = np.asanyarray(sct.dataobj)
    assert arr.shape == src.shape == (33, 41, 25) and row["shape"] == "33x41x25"
    assert arr.dtype.kind == "i" and arr.dtype.itemsize == 2  # int16 (in the input's byte order)
    np.testing.assert_allclose(sct.affine, src.affine)
    np.testing.assert_allclose(sct.header.get_zooms(), src.header.get_zooms())
    assert sct.header["descrip"] == src.header["descrip"]  # the input's header travels
    assert CT_MIN <= arr.min() and arr.max() <= CT_MAX
    assert (arr == -1000).any() and (arr != -1000).any()  # air outside the body, tissue inside
    assert abs(row["hu_min"] - arr.min()) <= 0.5 and abs(row["hu_max"] - arr.max()) <= 0.5
    assert 0 < row["body_voxels"] < arr.size
    # the served answer is the registered model.pt's answer in path mode, bit for bit
    mr = tmp_path / "anatomical.nii"
    shutil.copy2(ANATOMICAL, mr)
    ref = SyntheticCTModel.from_file(champion["model"], device="cpu").predict(None, pd.DataFrame({"path": [str(mr)]}))
    np.testing.assert_array_equal(np.asanyarray(nib.load(ref.loc[0, "output_path"]).dataobj), arr)


def test_bad_payloads_get_http_400_and_the_server_keeps_serving(served):
    rng = np.random.default_rng(0)
    nan = rng.normal(size=(8, 8, 8)).astype(np.float32)
    nan[2, 3, 4] = np.nan
    big = (int(round(MAX_VOXELS ** (1 / 3))) + 1,) * 3  # one voxel more per axis than allowed
    cases = {
        "not a nifti": (b"this is not a NIfTI file" * 40, "could not be read as NIfTI"),
        "4D": (_nifti_bytes(nib.Nifti1Image(np.zeros((6, 6, 6, 2), np.int16), np.eye(4))),
               "expected a 3D volume"),
        "NaN": (_nifti_bytes(nib.Nifti1Image(nan, np.eye(4))), "NaN/Inf"),
        "too large": (_nifti_bytes(nib.Nifti1Image(np.zeros(big, np.uint8), np.eye(4))),
                      f"more than the {MAX_VOXELS}"),
    }
    for label, (data, expected) in cases.items():
        status, body = post_nifti(served.url, data)
        assert status == 400, (label, status, body)
        assert expected in body["message"] and "mr_nifti_b64" in body["message"], (label, body["message"])
        assert body["error_code"] == "INVALID_PARAMETER_VALUE", (label, body)
        assert served.alive(), f"server died after the {label} payload:\n{served.log_tail()}"
    status, body = post_nifti(served.url, b"")
    assert status == 400
    status, body = post_nifti(served.url, ANATOMICAL.read_bytes())
    assert status == 200 and body["predictions"][0]["shape"] == "33x41x25"
