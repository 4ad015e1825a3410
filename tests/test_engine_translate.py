"""``medgan translate`` / ``translate_file`` for every task, and what it refuses to write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_core.cli import main
from gan_core.presets import preset
from gan_core.data.nifti import load_volume
from gan_core.data.normalize import ct_to_unit, mr_to_unit, unit_to_ct
from gan_core.engine import save_model, translate_array, translate_file, translate_slices
from gan_core.frameworks import build_framework

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Freshly initialised (seeded) tiny models saved as model.pt, one per task."""
    out = tmp_path_factory.mktemp("models")
    paths = {}
    for name, task in (("pix2pix", "mr2ct"), ("pix2pix", "kspace"), ("pix2pix", "ct2mr"),
                       ("pix2pix", "labels2ct"), ("dcgan", "synth")):
        torch.manual_seed(0)
        fw = build_framework(preset("tiny", name, task))
        paths[task] = out / f"{task}.pt"
        save_model(fw, paths[task])
    return paths


@pytest.fixture()
def subject(tiny_cohort) -> Path:
    return sorted(d for d in tiny_cohort.iterdir() if d.is_dir())[0]


def _slices(fw, x_unit: np.ndarray) -> np.ndarray:
    """The 2D model on the axial slices of a normalised (X, Y, Z) volume -> (X, Y, Z)."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_unit, 2, 0)))[:, None]
    return np.moveaxis(translate_slices(fw, x).numpy()[:, 0], 0, 2)


def test_mr2ct_output_is_int16_hu_of_the_normalised_mr(models, subject, tmp_path):
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", "--model", str(models["mr2ct"]), "--input", str(subject / "mr.nii.gz"),
                 "--mask", str(subject / "mask.nii.gz"), "--output", str(out)]) == 0
    mr, mask = load_volume(subject / "mr.nii.gz"), load_volume(subject / "mask.nii.gz").array > 0
    sct = load_volume(out, dtype=np.int16)
    assert np.array_equal(sct.affine, mr.affine) and sct.array.shape == mr.array.shape
    from gan_core.engine import load_model

    fw = load_model(models["mr2ct"])
    hu = unit_to_ct(_slices(fw, mr_to_unit(mr.array, mask.astype(np.uint8))))
    want = np.round(np.where(mask, hu, -1000.0)).astype(np.int16)
    assert np.array_equal(sct.array, want)
    assert (sct.array[~mask] == -1000).all() and sct.array[mask].std() > 0


def test_kspace_model_translates_a_volume_file(models, subject, tmp_path):
    """Undersampled (seeded mask) -> network -> data consistency -> [0, 1] magnitude NIfTI."""
    from gan_core.engine import load_model
    from gan_core.tasks.kspace import data_consistency, fft2c, ifft2c, kspace_mask

    fw = load_model(models["kspace"])
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(fw.generate(x), x)  # the residual generator starts as the identity
    out = tmp_path / "recon.nii"
    assert main(["translate", "--model", str(models["kspace"]), "--input", str(subject / "mr.nii.gz"),
                 "--output", str(out), "--seed", "3"]) == 0
    mr = load_volume(subject / "mr.nii.gz")
    got = load_volume(out)
    assert got.array.dtype == np.float32 and np.array_equal(got.affine, mr.affine)
    # the same pipeline by hand, slices along the volume's last axis
    from gan_core.data.masks import body_mask

    mask = body_mask(mr.array)
    mag = (np.moveaxis(mr_to_unit(mr.array, mask), 2, 0).astype(np.float64) + 1) / 2  # (Z, X, Y)
    t = fw.cfg.task
    cols = kspace_mask(mag.shape[-1], t.acceleration, t.center_fraction, t.mask, np.random.default_rng(3))
    measured = fft2c(mag) * cols
    zero_filled = np.clip(np.abs(ifft2c(measured)), 0, 1)
    recon = np.clip(data_consistency(zero_filled, cols, measured), 0, 1)
    want = np.where(mask > 0, np.moveaxis(recon, 0, 2), 0.0)
    np.testing.assert_allclose(got.array, want, atol=2e-6)
    assert 0 <= got.array.min() and got.array.max() <= 1 and (got.array[mask == 0] == 0).all()
    # the degradation is seeded: another seed samples other k-space columns
    other = translate_array(fw, mr.array, seed=4)
    assert not np.allclose(other, got.array)


def test_ct2mr_model_translates_a_ct_file_in_hu(models, subject, tmp_path):
    from gan_core.engine import load_model

    out = tmp_path / "smr.nii.gz"
    assert main(["translate", "--model", str(models["ct2mr"]), "--input", str(subject / "ct.nii.gz"),
                 "--mask", str(subject / "mask.nii.gz"), "--output", str(out)]) == 0
    ct, mask = load_volume(subject / "ct.nii.gz"), load_volume(subject / "mask.nii.gz").array > 0
    got = load_volume(out)
    pred = _slices(load_model(models["ct2mr"]), ct_to_unit(ct.array))
    want = np.where(mask, np.clip((pred + 1) / 2, 0, 1), 0.0)
    np.testing.assert_allclose(got.array, want, atol=1e-6)
    assert got.array.dtype == np.float32 and np.array_equal(got.affine, ct.affine)


def test_labels2ct_model_translates_a_label_map(models, subject, tmp_path):
    out = translate_file(models["labels2ct"], subject / "labels.nii.gz", tmp_path / "sct.nii.gz")
    lab = load_volume(subject / "labels.nii.gz").array
    got = load_volume(out, dtype=np.int16).array
    from gan_core.data.masks import body_mask

    body = body_mask(lab, threshold=0.0) > 0  # the labelled head, sinuses filled
    assert body[lab > 0].all() and not body.all()
    assert got.shape == lab.shape and (got[~body] == -1000).all() and got[body].std() > 0


def test_unconditional_model_has_nothing_to_translate(models, subject, tmp_path, capsys):
    rc = main(["translate", "--model", str(models["synth"]), "--input", str(subject / "mr.nii.gz"),
               "--output", str(tmp_path / "x.nii.gz")])
    assert rc == 2 and "unconditional synthesis" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink", "mask"])
def test_refuses_to_overwrite_the_input_or_mask(models, subject, tmp_path, monkeypatch, capsys, how):
    mr = _copy(subject / "mr.nii.gz", tmp_path / "sub" / "mr.nii.gz")
    mask = _copy(subject / "mask.nii.gz", tmp_path / "sub" / "mask.nii.gz")
    before = {p: p.read_bytes() for p in (mr, mask)}
    output = str(mr)
    if how == "relative":
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        output = "../sub/./mr.nii.gz"
    elif how == "symlink":
        os.symlink(mr, tmp_path / "link.nii.gz")
        output = str(tmp_path / "link.nii.gz")
    elif how == "hardlink":
        os.link(mr, tmp_path / "hard.nii.gz")
        output = str(tmp_path / "hard.nii.gz")
    elif how == "mask":
        output = str(mask)
    rc = main(["translate", "--model", str(models["mr2ct"]), "--input", str(mr), "--mask", str(mask),
               "--output", output])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"is the {'mask' if how == 'mask' else 'input'} file" in err and "refusing to overwrite" in err
    assert all(p.read_bytes() == b for p, b in before.items())


def test_a_failed_translation_leaves_an_existing_output_untouched(models, subject, tmp_path):
    out = tmp_path / "out" / "sct.nii.gz"
    out.parent.mkdir()
    out.write_bytes(b"previous result")
    bad_mask = tmp_path / "mask.nii.gz"
    from gan_core.data.nifti import save_volume

    save_volume(bad_mask, np.ones((5, 5, 5), np.uint8))  # another grid than the MR's
    rc = main(["translate", "--model", str(models["mr2ct"]), "--input", str(subject / "mr.nii.gz"),
               "--mask", str(bad_mask), "--output", str(out)])
    assert rc == 2 and out.read_bytes() == b"previous result"
    assert sorted(p.name for p in out.parent.iterdir()) == ["sct.nii.gz"]  # no temp file left
    translate_file(models["mr2ct"], subject / "mr.nii.gz", out)
    assert load_volume(out).array.shape == load_volume(subject / "mr.nii.gz").array.shape
    assert sorted(p.name for p in out.parent.iterdir()) == ["sct.nii.gz"]


def test_an_acquired_low_dose_ct_is_translated_as_is(subject, tmp_path):
    """``--degraded-input``: a real low-dose CT goes through the network as it is (the same as
    the network on the normalised volume); without it, the degradation is simulated first."""
    from gan_core.engine import predict_volume

    torch.manual_seed(0)
    fw = build_framework(preset("tiny", "pix2pix", "lowdose"))
    ct = load_volume(subject / "ct.nii.gz").array.astype(np.float32)
    mask = load_volume(subject / "mask.nii.gz").array
    direct = translate_array(fw, ct, mask, degraded_input=True)
    net = np.moveaxis(predict_volume(fw, np.moveaxis(ct_to_unit(ct), 2, 0)[None]), 0, 2)
    expected = np.where(mask > 0, unit_to_ct(net), -1000.0)
    np.testing.assert_allclose(direct, expected, atol=1e-3)
    simulated = translate_array(fw, ct, mask, seed=0)
    assert np.abs(simulated - direct)[mask > 0].mean() > 1.0  # the simulated noise changed it

    model = tmp_path / "lowdose.pt"
    save_model(fw, model)
    out = tmp_path / "den.nii.gz"
    assert main(["translate", "--model", str(model), "--input", str(subject / "ct.nii.gz"),
                 "--mask", str(subject / "mask.nii.gz"), "--output", str(out),
                 "--degraded-input"]) == 0
    np.testing.assert_array_equal(load_volume(out).array, np.round(direct).astype(np.int16))


def test_a_simulated_input_task_refuses_an_acquired_input(models, subject, tmp_path, capsys):
    out = tmp_path / "k.nii.gz"
    assert main(["translate", "--model", str(models["kspace"]), "--input",
                 str(subject / "mr.nii.gz"), "--output", str(out), "--degraded-input"]) == 2
    assert "simulates its input" in capsys.readouterr().err and not out.exists()


def test_a_loaded_model_builds_no_optimizer_and_a_training_one_does(models):
    """Inference loads only weights: no Adam (building one imports torch._dynamo, seconds of CPU
    in every evaluate / register / serve process); training still gets its optimizers."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from gan_core.engine import load_model\n"
            "import torch\n"
            f"fw = load_model({str(models['mr2ct'])!r})\n"
            "y = fw.generate(torch.zeros(1, 1, 16, 16))\n"
            "print(fw._opts is None, 'torch._dynamo' in sys.modules, tuple(y.shape))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split("\n")[-2]
    assert out == "True False (1, 1, 16, 16)"
    fw = build_framework(preset("tiny", "pix2pix"))
    assert set(fw.opts) == {"G", "D"} and set(fw.scheds) == set(fw.opts)
    assert fw.lr() == pytest.approx(fw.cfg.optim.lr)
