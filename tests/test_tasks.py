"""Tasks: registry, channels and loss defaults from the config, labels in the shards, the
datasets' inputs per task, the simple tasks' baselines, and the generic task evaluation."""

import json
import math

import numpy as np
import pytest
import torch

from gan_core.config import TaskConfig, apply_overrides, from_dict, preset
from gan_core.data.shards import Shards, SliceDataset
from gan_core.tasks import available, build_task, get_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_every_task_and_rejects_unknown_names():
    assert {"mr2ct", "ct2mr", "labels2ct", "synth", "kspace", "lowdose", "superres"} <= set(available())
    with pytest.raises(KeyError, match="available"):
        get_task("ct2pet")


def test_preset_takes_channels_and_loss_defaults_from_the_task():
    assert preset("tiny", "pix2pix", "labels2ct").model.in_channels == 10
    assert preset("tiny", "pix2pix", "mr2ct").model.in_channels == 1
    k = preset("tiny", "pix2pix", "kspace")
    assert k.loss.frequency > 0 and preset("tiny", "pix2pix").loss.frequency == 0
    # an explicit override wins over the task's default, a task switch updates the channels
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"task.name": "kspace", "loss.frequency": 3.0})
    assert cfg.loss.frequency == 3.0
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"task.name": "labels2ct", "task.n_classes": 4})
    assert cfg.model.in_channels == 4
    cfg = from_dict({"preset": "tiny", "framework": "pix2pix", "task": {"name": "labels2ct", "n_classes": 5}})
    assert cfg.model.in_channels == 5


def test_shards_carry_tissue_labels(tiny_shards):
    sh = Shards(tiny_shards / "train")
    assert sh.index["arrays"] == ["mr", "ct", "mask", "labels"]
    lab = sh.arrays["labels"]
    assert lab.dtype == np.uint8 and lab.shape == sh.arrays["ct"].shape and lab.max() > 3
    body = sh.arrays["mask"] > 0
    assert (lab[~body] == 0).mean() > 0.95  # outside the head: air


def test_dataset_inputs_follow_the_task(tiny_shards):
    d = tiny_shards / "train"
    plain = SliceDataset(d)[3]
    ct2mr = SliceDataset(d, task=build_task(TaskConfig(name="ct2mr")))[3]
    assert torch.equal(ct2mr["A"], plain["B"]) and torch.equal(ct2mr["B"], plain["A"])
    lab = SliceDataset(d, task=build_task(TaskConfig(name="labels2ct")))[3]
    assert lab["A"].shape == (10, *plain["B"].shape[1:])
    assert torch.equal(lab["A"].sum(0), torch.ones_like(lab["A"][0]))
    assert torch.equal(lab["A"].argmax(0), lab["labels"][0])
    syn = SliceDataset(d, image_size=32, task=build_task(TaskConfig(name="synth")))[(0, 2, 2)]
    assert syn["A"].shape == (0, 32, 32) and syn["B"].shape == (1, 32, 32)


def test_labels2ct_and_ct2mr_baselines_fit_on_the_train_split(tiny_shards):
    sh = Shards(tiny_shards / "train")
    slabs = [sh.subject_slab(i) for i in range(len(sh.subjects))]
    t = build_task(TaskConfig(name="labels2ct"))
    t.fit_baseline(slabs)
    from gan_core.data.normalize import unit_to_ct

    lab = np.concatenate([s["labels"].ravel() for s in slabs])
    hu = unit_to_ct(np.concatenate([s["ct"].ravel() for s in slabs]))
    wm = 7
    assert t.lut_hu[wm] == pytest.approx(hu[lab == wm].mean(), rel=1e-4)
    pred = t.baseline(t.degrade(slabs[0], np.random.default_rng(0)), slabs[0])
    assert pred.shape == slabs[0]["ct"].shape
    c = build_task(TaskConfig(name="ct2mr"))
    assert c.baseline(c.degrade(slabs[0], np.random.default_rng(0)), slabs[0]) is None  # not fitted
    c.fit_baseline(slabs)
    p = c.baseline(c.degrade(slabs[0], np.random.default_rng(0)), slabs[0])
    m = slabs[0]["mask"] > 0
    assert np.abs(p - slabs[0]["mr"])[m].mean() < np.abs(-1 - slabs[0]["mr"])[m].mean()


def test_labels2ct_rejects_labels_beyond_n_classes(tiny_shards):
    sh = Shards(tiny_shards / "train")
    with pytest.raises(ValueError, match="n_classes"):
        build_task(TaskConfig(name="labels2ct", n_classes=3)).degrade(sh.subject_slab(0), None)


@pytest.fixture(scope="module")
def ct2mr_model(tiny_shards, tmp_path_factory):
    from gan_core.engine import load_model, train

    out = tmp_path_factory.mktemp("ct2mr")
    res = train(preset("tiny", "pix2pix", "ct2mr"), tiny_shards, out, progress=False)
    assert res.val_mae is not None and 0 < res.val_mae < 1.0  # [0, 1] magnitude units, not HU
    return load_model(res.model_path)


def test_evaluate_task_scores_models_and_baseline_and_survives_a_bad_subject(ct2mr_model, tiny_shards, tmp_path):
    from gan_core.task_evaluation import evaluate_task, task_table

    task = build_task(ct2mr_model.cfg.task)
    rep = evaluate_task({"p2p": ct2mr_model}, task, tiny_shards / "test", tmp_path,
                        train_shards=tiny_shards / "train", subjects=[0, 99])
    assert rep["methods"] == ["p2p", "baseline"] and rep["unit"] == "[0,1]"
    assert [f["subject"] for f in rep["failed"]] == ["#99"]
    assert len(rep["per_subject"]) == 1
    row = rep["per_subject"][0]
    assert set(row["p2p"]) == {"nmse", "psnr", "ssim"} and all(math.isfinite(v) for v in row["p2p"].values())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["task"] == "ct2mr" and saved["aggregate"]["baseline"]["n"] == 1
    assert "| p2p |" in task_table(rep)
    assert list((tmp_path / "figures").glob("*.png"))


def test_evaluate_task_lists_kspace_raw_and_data_consistent_outputs(tiny_shards, tmp_path):
    from gan_core.frameworks import build_framework
    from gan_core.task_evaluation import evaluate_task

    cfg = preset("tiny", "pix2pix", "kspace")
    fw = build_framework(cfg)
    fw.train(False)
    rep = evaluate_task({"net": fw}, build_task(cfg.task), tiny_shards / "test", tmp_path)
    assert rep["methods"] == ["net", "net-raw", "baseline"]
    agg = rep["aggregate"]
    # hard data consistency only replaces measured frequencies with the truth's: never worse
    assert agg["net"]["nmse"]["mean"] <= agg["net-raw"]["nmse"]["mean"] + 1e-9


@pytest.mark.parametrize("task", ["lowdose", "kspace"])
def test_denoising_tasks_train_a_residual_generator_that_starts_as_identity(task):
    from gan_core.frameworks import build_framework
    from gan_core.models.residual import ResidualGenerator

    cfg = preset("tiny", "pix2pix", task)
    fw = build_framework(cfg)
    g = fw.nets["G"]
    assert cfg.model.residual and isinstance(g, ResidualGenerator)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(g(x), x)
    fw.train_step({"A": x, "B": (x + 0.1).clamp(-1, 1), "mask": torch.ones_like(x)})
    last = [m for m in g.net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last.weight.grad is not None and last.weight.detach().abs().sum() > 0  # it learns
    assert not torch.equal(g(x), x)
    assert not preset("tiny", "pix2pix", "mr2ct").model.residual
    with pytest.raises(ValueError, match="residual"):
        build_framework(apply_overrides(preset("tiny", "pix2pix", "labels2ct"), {"model.residual": True}))


def test_unconditional_synthesis_validates_by_intensity_distance(tiny_shards):
    """Synthesis has no per-image target: validation is the W1 distance of pixel intensities
    between samples and val slices, in the target's units (HU), finite and bounded."""
    from gan_core.frameworks import build_framework
    from gan_core.engine import synthesis_distance, validate

    cfg = preset("tiny", "dcgan", "synth")
    fw = build_framework(cfg)
    v = validate(fw, tiny_shards / "val")
    assert math.isfinite(v) and 0 < v < 4024
    d = synthesis_distance(fw, tiny_shards / "val", build_task(cfg.task))
    assert v == pytest.approx(d * build_task(cfg.task).target_scale)


def test_cli_trains_and_evaluates_an_application_task(tiny_shards, tmp_path, capsys):
    from gan_core.cli import main

    run = tmp_path / "run"
    assert main(["train", "--framework", "pix2pix", "--preset", "tiny", "--task", "lowdose",
                 "--set", "task.dose=0.1", "--data", str(tiny_shards), "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", "--model", f"net={run}", "--data", str(tiny_shards),
                 "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "| net |" in out and "| baseline |" in out and "| input |" in out
    rep = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert rep["task"] == "lowdose" and rep["task_config"]["dose"] == 0.1 and not rep["failed"]
