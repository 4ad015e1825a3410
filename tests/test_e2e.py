"""End to end on CPU: the demo preset learns — on held-out phantom subjects pix2pix beats the
non-learned baseline's MAE (SynthRAD metric, HU, inside the body mask)."""

import json

import numpy as np

from gan_core.cli import main
from gan_core.data.pack import pack_cohort
from gan_core.presets import preset
from gan_core.data.phantom import write_cohort
from gan_core.data.shards import Shards
from gan_core.engine import load_model, train
from gan_core.eval.evaluate import evaluate
from gan_core.tasks import build_task


def test_demo_preset_beats_baseline_on_held_out_subjects(tmp_path):
    cohort, shards = tmp_path / "cohort", tmp_path / "shards"
    write_cohort(cohort, subjects=14, seed=0, shape=(64, 64, 32), spacing=(3.0, 3.0, 5.0),
                 lesion_prevalence=0.4)
    splits = pack_cohort(cohort, shards, seed=0)
    assert not set(splits["train"]) & set(splits["test"])
    res = train(preset("demo", "pix2pix"), shards, tmp_path / "run", progress=False)
    sh = Shards(shards / "test")
    fw = load_model(res.model_path)
    report = evaluate({"pix2pix": fw}, build_task(fw.cfg.task), shards / "test", tmp_path / "eval",
                      train_shards=shards / "train", figures=1)
    model, base = report["aggregate"]["pix2pix"]["mae"]["mean"], report["aggregate"]["baseline"]["mae"]["mean"]
    assert model < base, f"pix2pix MAE {model:.1f} HU is not below the baseline's {base:.1f} HU"
    assert report["aggregate"]["pix2pix"]["ssim"]["mean"] > report["aggregate"]["baseline"]["ssim"]["mean"]
    assert not report["failed"] and list((tmp_path / "eval" / "figures").glob("*.png"))
    json.loads((tmp_path / "eval" / "metrics.json").read_text())  # strict JSON

    # the CLI's translate writes a CT in HU on the MR's grid
    subj = sh.subject_files(0)
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", "--model", str(res.model_path), "--input", subj.mr, "--output", str(out),
                 "--mask", subj.mask]) == 0
    import nibabel as nib

    sct, mr = nib.load(out), nib.load(subj.mr)
    np.testing.assert_allclose(sct.affine, mr.affine)
    data = np.asarray(sct.dataobj)
    assert data.dtype == np.int16 and data.min() >= -1024 and data.max() > 300
