"""Model and checkpoint files never execute code: everything loads with ``weights_only=True``.

A crafted ``model.pt`` whose pickle would create a marker file is refused by every loader (the
engine, ``medgan translate``, the pipeline components) with an error naming the file, and the
marker is never created. What medgan itself writes loads with plain ``weights_only=True``.
"""

from __future__ import annotations

import ast
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_core.presets import preset
from gan_core.engine import (load_checkpoint, load_model, read_model_file, save_checkpoint,
                             save_model)
from gan_core.engine.checkpoint import rng_state, set_rng_state
from gan_core.frameworks import build_framework

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``os.makedirs(marker)``: code execution, observable on disk."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _evil(path: Path, marker: Path, as_checkpoint: bool = False) -> Path:
    body = {"config": preset("tiny", "pix2pix").to_dict(), "nets": {}, "payload": _Payload(marker)}
    if as_checkpoint:
        body.update(step=2, framework={"nets": {}}, rng={})
    torch.save(body, path)
    return path


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    # the fixture really runs code under weights_only=False: the other tests could fail
    marker = tmp_path / "ran"
    torch.load(_evil(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_engine_loaders_refuse_a_pickle_payload(tmp_path):
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "model.pt", marker, as_checkpoint=True)
    for load in (load_model, read_model_file, load_checkpoint):
        with pytest.raises(ValueError, match=r"model\.pt: not a medgan model") as err:
            load(evil)
        assert str(evil) in str(err.value)
    with pytest.raises(ValueError, match="not a medgan model"):
        load_model(tmp_path)  # the run folder holding it
    assert not marker.exists()


def test_translate_cli_refuses_a_pickle_payload(tmp_path, capsys):
    from gan_core.cli import main

    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pt", marker)
    rc = main(["translate", "--model", str(evil), "--input", str(tmp_path / "mr.nii.gz"),
               "--output", str(tmp_path / "out.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{evil}: not a medgan model" in err
    assert not marker.exists() and not (tmp_path / "out.nii.gz").exists()


def test_components_loaders_refuse_a_pickle_payload(tmp_path):
    from components.pyfunc_model import SyntheticCTModel

    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "model.pt", marker)
    with pytest.raises(ValueError, match="not a medgan model"):
        SyntheticCTModel.from_file(evil)
    assert not marker.exists()


def test_resuming_from_a_pickle_checkpoint_never_runs_it(tmp_path, tiny_shards):
    """A Ray Train worker resumes through ``gan_core.engine.train(resume_from=...)`` with the
    checkpoint.pt of a Ray checkpoint: a crafted one is refused before any step runs."""
    from gan_core.engine import train

    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "checkpoint.pt", marker, as_checkpoint=True)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a medgan model"):
        train(preset("tiny", "pix2pix"), tiny_shards, tmp_path / "run", resume_from=evil,
              progress=False)
    assert not marker.exists()


def test_no_unsafe_torch_load_left_in_the_code():
    bad = []
    for folder in ("gan_core", "components", "bench", "pipelines", "tests"):
        for py in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(), str(py))):
                if isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if (kw.arg == "weights_only" and isinstance(kw.value, ast.Constant)
                                and kw.value.value is False
                                and py.name != "test_model_safety.py"):
                            bad.append(f"{py.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"torch.load(weights_only=False) must not be used: {bad}"


def test_what_medgan_writes_loads_with_weights_only(tmp_path):
    for name, task in (("cyclegan", "mr2ct"), ("unit", "mr2ct"), ("dcgan", "synth")):
        fw = build_framework(preset("tiny", name, task))
        save_checkpoint(fw, 3, tmp_path / f"{name}.ckpt")
        save_model(fw, tmp_path / f"{name}.pt", {"val_mae": 1.5, "step": 3})
        ck = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        md = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert ck["step"] == 3 and md["val_mae"] == 1.5 and md["config"]["framework"] == name
        other = build_framework(preset("tiny", name, task))
        other.load_state_dict(ck["framework"])  # the framework's state round-trips
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temp files left


def test_save_model_refuses_values_that_would_need_pickle(tmp_path):
    fw = build_framework(preset("tiny", "pix2pix"))
    with pytest.raises(TypeError, match=r"model\.pt\.score: numpy\.ndarray cannot be stored"):
        save_model(fw, tmp_path / "model.pt", {"score": np.zeros(2)})
    assert not list(tmp_path.iterdir())


def test_rng_state_round_trips_exactly():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    st = rng_state()
    a = (torch.rand(3), np.random.standard_normal(3), random.random())
    set_rng_state(st)
    b = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
