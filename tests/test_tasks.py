"""Tasks: registry, channels and loss defaults from the config, labels and lesions in the shards,
the datasets' inputs per task, the simple tasks' baselines, and the one evaluator
(gan_core.eval.evaluate) with each task's metrics, baseline and audit, from Python and the CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from gan_core.config import TaskConfig
from gan_core.data.shards import Shards, SliceDataset
from gan_core.presets import apply_overrides, from_dict, preset
from gan_core.tasks import available, build_task, get_task, task_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_lists_every_task_and_rejects_unknown_names():
    assert {"mr2ct", "ct2mr", "labels2ct", "synth", "kspace", "lowdose", "superres"} <= set(available())
    with pytest.raises(KeyError, match="available"):
        get_task("ct2pet")


def test_each_task_declares_its_params():
    for name in available():
        cls = get_task(name)
        params = task_config(name)
        assert isinstance(params, cls.Params) and issubclass(cls.Params, TaskConfig)
        assert params.name == name and build_task(params).name == name
        if cls.Params is not TaskConfig:  # its own class names its own task by default
            assert cls.Params().name == name
        assert all(k.startswith(("loss.", "fw.", "model.")) for k in cls.search_space)
    assert task_config("kspace", acceleration=8).acceleration == 8
    with pytest.raises(ValueError, match=r"task.factor.*task 'kspace'"):
        task_config("kspace", factor=2)
    with pytest.raises(TypeError, match="takes a KSpaceReconstruction.Params"):
        build_task(TaskConfig(name="kspace"))


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
    assert sh.index["arrays"] == ["mr", "ct", "mask", "labels", "lesion"]
    lab = sh.arrays["labels"]
    assert lab.dtype == np.uint8 and lab.shape == sh.arrays["ct"].shape and lab.max() > 3
    body = sh.arrays["mask"] > 0
    assert (lab[~body] == 0).mean() > 0.95  # outside the head: air


def test_shards_carry_the_lesion_masks_in_slab_layout(tiny_shards):
    from gan_core.data.nifti import load_volume

    sh = Shards(tiny_shards / "train")
    with_lesion = 0
    for i in range(len(sh.subjects)):
        files = sh.subject_files(i)
        want = np.moveaxis(load_volume(files.lesion).array > 0, 2, 0)  # (X, Y, Z) -> (Z, X, Y)
        got = sh.subject_slab(i)["lesion"]
        assert got.dtype == np.uint8 and np.array_equal(got > 0, want)
        with_lesion += bool(want.any())
    assert with_lesion >= 1  # the cohort has lesions to audit


def test_dataset_inputs_follow_the_task(tiny_shards):
    d = tiny_shards / "train"
    plain = SliceDataset(d)[3]
    ct2mr = SliceDataset(d, task=build_task(task_config("ct2mr")))[3]
    assert torch.equal(ct2mr["A"], plain["B"]) and torch.equal(ct2mr["B"], plain["A"])
    lab = SliceDataset(d, task=build_task(task_config("labels2ct")))[3]
    assert lab["A"].shape == (10, *plain["B"].shape[1:])
    assert torch.equal(lab["A"].sum(0), torch.ones_like(lab["A"][0]))
    assert torch.equal(lab["A"].argmax(0), lab["labels"][0])
    syn = SliceDataset(d, image_size=32, task=build_task(task_config("synth")))[(0, 2, 2)]
    assert syn["A"].shape == (0, 32, 32) and syn["B"].shape == (1, 32, 32)


def test_labels2ct_and_ct2mr_baselines_fit_on_the_train_split(tiny_shards):
    sh = Shards(tiny_shards / "train")
    slabs = [sh.subject_slab(i) for i in range(len(sh.subjects))]
    t = build_task(task_config("labels2ct"))
    t.fit_baseline(slabs)
    from gan_core.data.normalize import unit_to_ct

    lab = np.concatenate([s["labels"].ravel() for s in slabs])
    hu = unit_to_ct(np.concatenate([s["ct"].ravel() for s in slabs]))
    wm = 7
    assert t.lut_hu[wm] == pytest.approx(hu[lab == wm].mean(), rel=1e-4)
    pred = t.baseline(t.degrade(slabs[0], np.random.default_rng(0)), slabs[0])
    assert pred.shape == slabs[0]["ct"].shape
    c = build_task(task_config("ct2mr"))
    assert c.baseline(c.degrade(slabs[0], np.random.default_rng(0)), slabs[0]) is None  # not fitted
    c.fit_baseline(slabs)
    p = c.baseline(c.degrade(slabs[0], np.random.default_rng(0)), slabs[0])
    m = slabs[0]["mask"] > 0
    assert np.abs(p - slabs[0]["mr"])[m].mean() < np.abs(-1 - slabs[0]["mr"])[m].mean()


def test_labels2ct_rejects_labels_beyond_n_classes(tiny_shards):
    sh = Shards(tiny_shards / "train")
    with pytest.raises(ValueError, match="n_classes"):
        build_task(task_config("labels2ct", n_classes=3)).degrade(sh.subject_slab(0), None)


@pytest.fixture(scope="module")
def ct2mr_model(tiny_shards, tmp_path_factory):
    from gan_core.engine import load_model, train

    out = tmp_path_factory.mktemp("ct2mr")
    res = train(preset("tiny", "pix2pix", "ct2mr"), tiny_shards, out, progress=False)
    assert res.val_mae is not None and 0 < res.val_mae < 1.0  # [0, 1] magnitude units, not HU
    return load_model(res.model_path)


def test_evaluate_scores_models_and_baseline_and_survives_a_bad_subject(ct2mr_model, tiny_shards, tmp_path):
    from gan_core.eval.evaluate import evaluate
    from gan_core.eval.report import results_table

    task = build_task(ct2mr_model.cfg.task)
    rep = evaluate({"p2p": ct2mr_model}, task, tiny_shards / "test", tmp_path,
                   train_shards=tiny_shards / "train", subjects=[0, 99, "nobody"])
    assert rep["methods"] == ["p2p", "baseline"] and rep["unit"] == "[0,1]"
    assert [f["subject"] for f in rep["failed"]] == ["#99", "nobody"]
    assert "not in" in rep["failed"][1]["error"]
    assert len(rep["per_subject"]) == 1 and "audit" not in rep  # CT -> MR has no audit
    row = rep["per_subject"][0]
    assert set(row["p2p"]) == {"nmse", "psnr", "ssim"} and all(math.isfinite(v) for v in row["p2p"].values())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["task"] == "ct2mr" and saved["aggregate"]["baseline"]["n"] == 1
    assert "| p2p |" in results_table(rep) and "audit" not in results_table(rep)
    assert list((tmp_path / "figures").glob("*.png"))


def test_evaluate_raises_naming_every_subject_when_all_fail(ct2mr_model, tiny_shards, tmp_path):
    from gan_core.eval.evaluate import EvaluationFailed, evaluate

    with pytest.raises(EvaluationFailed, match=r"could be evaluated: nobody: KeyError.*; #7: IndexError") as e:
        evaluate({"p2p": ct2mr_model}, build_task(ct2mr_model.cfg.task), tiny_shards / "test",
                 tmp_path, subjects=["nobody", 7])
    assert [f["subject"] for f in e.value.failed] == ["nobody", "#7"]
    assert json.loads((tmp_path / "metrics.json").read_text())["failed"] == e.value.failed


def test_mr2ct_evaluation_audits_lesions_in_hu_as_the_nifti_audit(tiny_shards, tmp_path):
    """MR -> CT on the shards: SynthRAD metrics in HU, the lesion audit per method with the
    subject's spacing (same numbers as auditing the NIfTI volumes), and the cohort verdict."""
    from gan_core.data.nifti import load_volume
    from gan_core.eval.evaluate import evaluate
    from gan_core.eval.metrics import lesion_audit
    from gan_core.eval.report import results_table
    from gan_core.frameworks import build_framework

    cfg = preset("tiny", "pix2pix")
    fw = build_framework(cfg)
    fw.train(False)
    task = build_task(cfg.task)
    rep = evaluate({"net": fw}, task, tiny_shards / "test", tmp_path, train_shards=tiny_shards / "train",
                   figures=1)
    assert rep["methods"] == ["net", "baseline"] and rep["unit"] == "HU" and not rep["failed"]
    sh = Shards(tiny_shards / "test")
    for i, row in enumerate(rep["per_subject"]):
        files = sh.subject_files(i)
        lesion, ct = load_volume(files.lesion), load_volume(files.ct)
        assert row["has_lesion"] == bool(lesion.array.any())
        assert set(row["net"]) == {"mae", "psnr", "ssim", "audit"} and 0 < row["baseline"]["mae"] < 500
        # the audit of the NIfTI volumes (X, Y, Z) with the NIfTI spacing gives the same verdict
        base_hu = np.moveaxis(task.baseline(task.degrade(sh.subject_slab(i), None), sh.subject_slab(i)), 0, 2)
        from gan_core.data.normalize import unit_to_ct

        direct = lesion_audit(ct.array, unit_to_ct(base_hu), lesion.array, load_volume(files.mask).array,
                              spacing=ct.spacing, labels=load_volume(files.labels).array,
                              border_margin_mm=task.border_margin["margin_mm"])
        got = row["baseline"]["audit"]
        for k in ("n_true", "n_evaluable", "n_preserved", "n_invented", "passed"):
            assert got[k] == direct[k], k
        for a, b in zip(got["lesions"], direct["lesions"]):
            assert a["true_contrast"] == pytest.approx(b["true_contrast"], abs=1e-3)
    verdict = rep["audit"]["net"]
    assert verdict["subjects_audited"] == len(rep["per_subject"])
    assert verdict["passed"] is all(r["net"]["audit"]["passed"] for r in rep["per_subject"])
    assert verdict["lesions_true"] == sum(r["net"]["audit"]["n_true"] for r in rep["per_subject"])
    table = results_table(rep)
    assert "| net |" in table and "audit" in table and verdict["reason"] in table
    assert len(list((tmp_path / "figures").glob("*.png"))) == 1


def test_mr2ct_audit_summary_verdicts():
    task = build_task(TaskConfig())

    def row(sid, has_lesion, **a):
        base = {"n_true": 0, "n_evaluable": 0, "n_preserved": 0, "n_invented": 0, "passed": True}
        return {"subject": sid, "has_lesion": has_lesion, "model": {"audit": {**base, **a}}}

    ok = task.audit_summary({"per_subject": [row("a", True, n_true=1, n_evaluable=1, n_preserved=1),
                                             row("b", False)], "failed": []}, "model")
    assert ok["passed"] and ok["lesion_subjects_all_preserved"] == 1 and ok["failing_subjects"] == []
    lost = task.audit_summary({"per_subject": [
        row("a", True, n_true=2, n_evaluable=2, n_preserved=1, passed=False),
        row("b", False, n_invented=2, passed=False)], "failed": []}, "model")
    assert not lost["passed"] and lost["failing_subjects"] == ["a", "b"]
    assert lost["lesion_free_subjects_with_invented"] == 1 and lost["lesions_invented"] == 2
    none = task.audit_summary({"per_subject": [{"subject": "c", "has_lesion": False, "model": {"mae": 1.0}}],
                               "failed": []}, "model")
    assert not none["passed"] and none["subjects_not_audited"] == ["c"] and "not performed" in none["reason"]
    assert build_task(TaskConfig(name="ct2mr")).audit_summary({"per_subject": []}, "model") is None


def test_evaluate_lists_kspace_raw_and_data_consistent_outputs(tiny_shards, tmp_path):
    from gan_core.eval.evaluate import evaluate
    from gan_core.frameworks import build_framework

    cfg = preset("tiny", "pix2pix", "kspace")
    fw = build_framework(cfg)
    fw.train(False)
    rep = evaluate({"net": fw}, build_task(cfg.task), tiny_shards / "test", tmp_path)
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


def _break_subjects(shards, dst, split: str, n: int):
    """A copy of ``shards`` whose first ``n`` subjects of ``split`` hold NaN CT; returns their ids."""
    shutil.copytree(shards, dst)
    sh = Shards(dst / split)
    ct = np.load(dst / split / "ct.npy", mmap_mode="r+")
    for s in sh.subjects[:n]:
        ct[s["offset"]:s["offset"] + s["depth"]] = np.nan
    ct.flush()
    return [s["id"] for s in sh.subjects[:n]]


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

    # one bad subject is reported and the others scored; all bad: a non-zero exit naming them
    n_test = len(Shards(tiny_shards / "test").subjects)
    assert n_test >= 2
    (bad,) = _break_subjects(tiny_shards, tmp_path / "one_bad", "test", 1)
    assert main(["evaluate", "--model", f"net={run}", "--data", str(tmp_path / "one_bad"),
                 "--out", str(tmp_path / "eval1"), "--figures", "0"]) == 0
    captured = capsys.readouterr()
    rep = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    assert [f["subject"] for f in rep["failed"]] == [bad] and len(rep["per_subject"]) == n_test - 1
    assert f"1 subject(s) failed: {bad}: " in captured.err
    bad_all = _break_subjects(tiny_shards, tmp_path / "all_bad", "test", n_test)
    assert main(["evaluate", "--model", f"net={run}", "--data", str(tmp_path / "all_bad"),
                 "--out", str(tmp_path / "eval2")]) == 2
    err = capsys.readouterr().err
    assert "medgan evaluate: error: no subject of" in err
    assert all(f"{sid}: " in err for sid in bad_all) and "Error" in err
