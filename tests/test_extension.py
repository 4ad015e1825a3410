"""The house is easy to extend: a framework and a task defined HERE, in this test file, train
through the ``medgan`` CLI, are evaluated and translated by it, appear in Ray Tune's default
search space and in a compiled pipeline, with no edit anywhere else in the code base."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch.nn.functional as F
import yaml
from scipy.ndimage import uniform_filter
from torch import Tensor, nn

from gan_core import frameworks, tasks
from gan_core.config import FrameworkConfig, TaskConfig
from gan_core.frameworks.base import GANFramework, build_gen
from gan_core.tasks.base import Degraded, Task

FW, TASK = "toy_regressor", "toy_deblur"


class ToyRegressor(GANFramework):
    """Not a GAN at all: one generator trained by a weighted L1 (the smallest framework)."""

    paired = True

    @dataclass
    class Params(FrameworkConfig):
        warmup: int = 0  # steps at half the L1 weight (a framework-owned knob, key fw.warmup)

    loss_defaults = {"image": 1.0}
    search_space = {"loss.image": ("loguniform", 0.1, 10.0), "fw.warmup": ("uniform", 0, 4)}

    def build_networks(self) -> dict[str, nn.Module]:
        m = self.cfg.model
        return {"G": build_gen(m, m.in_channels, m.out_channels)}

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"G": ["G"]}

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.to_device(batch)
        self.opts["G"].zero_grad(set_to_none=True)
        with self.autocast():
            fake = self.fwd["G"](b["A"])
        loss = F.l1_loss(fake.float(), b["B"].float()) * self.cfg.loss.image
        loss.backward()
        self.opts["G"].step()
        return {"G": loss.detach()}

    def generate(self, x: Tensor) -> Tensor:
        return self.infer("G", x)


class ToyDeblur(Task):
    """MR blurred by a box filter -> MR (a same-modality restoration task)."""

    source, target = "mr", "mr"

    @dataclass
    class Params(TaskConfig):
        width: int = 3  # box filter width in voxels (key task.width)

    search_space = {"loss.gradient": ("uniform", 0.0, 5.0)}

    def degrade(self, slab, rng) -> Degraded:
        mr = np.asarray(slab["mr"], np.float32)
        return Degraded(uniform_filter(mr, size=(1, self.cfg.width, self.cfg.width))[None])


@pytest.fixture(scope="module")
def toys():
    frameworks.register(FW)(ToyRegressor)
    tasks.register(TASK)(ToyDeblur)
    yield
    frameworks.FRAMEWORKS.remove(FW)
    tasks.TASKS.remove(TASK)


def test_toy_framework_and_task_train_evaluate_and_translate_through_the_cli(
        toys, tiny_shards, tiny_cohort, tmp_path, one_torch_thread):
    from gan_core.cli import main

    run = tmp_path / "run"
    assert main(["train", "--framework", FW, "--task", TASK, "--preset", "tiny", "--steps", "4",
                 "--set", "task.width=5", "--set", "fw.warmup=2", "--data", str(tiny_shards),
                 "--out", str(run), "--quiet"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["framework"] == FW and cfg["task"] == {"name": TASK, "width": 5}
    assert cfg["fw"] == {"warmup": 2} and cfg["loss"]["image"] == 1.0  # its own loss default
    assert (run / "model.pt").is_file()

    # scored by the one evaluator: the task's (MR) metrics beside the input, no branch on names
    assert main(["evaluate", "--model", str(run), "--data", str(tiny_shards),
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["per_subject"] and not report["failed"]
    assert "nmse" in next(iter(report["aggregate"].values()))

    # translated as a volume: the task degrades the input, the toy generator restores it
    subject = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    out = tmp_path / "restored.nii.gz"
    assert main(["translate", "--model", str(run), "--input", str(subject / "mr.nii.gz"),
                 "--output", str(out)]) == 0
    import nibabel as nib

    src, res = nib.load(subject / "mr.nii.gz"), nib.load(out)
    assert res.shape == src.shape and np.allclose(res.affine, src.affine)
    arr = np.asarray(res.dataobj)
    # an MR target comes out as the [0, 1] magnitude (not HU: the task, not a name branch, says so)
    assert arr.dtype == np.float32 and 0.0 <= arr.min() and arr.max() <= 1.0 and arr.max() > 0.1


def test_toy_plugins_appear_in_tunes_default_search_space(toys):
    from components.step import build_config
    from components.search_space import default_search_space

    space = default_search_space(build_config(FW, "tiny", task=TASK))
    assert space == {"loss.image": ["loguniform", 0.1, 10.0], "fw.warmup": ["uniform", 0, 4],
                     "loss.gradient": ["uniform", 0.0, 5.0]}


def test_toy_plugins_appear_in_a_compiled_pipeline(toys, tmp_path):
    from kfp import compiler

    from pipelines.builder import build_pipeline

    p = build_pipeline("toy-pipeline", framework=FW, task=TASK, register=False,
                       description="a framework and a task defined in a test file")
    out = tmp_path / "toy.yaml"
    compiler.Compiler().compile(p, package_path=str(out))
    ir = next(yaml.safe_load_all(out.read_text()))
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["framework"]["defaultValue"] == FW and params["task"]["defaultValue"] == TASK
