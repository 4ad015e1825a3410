"""End to end on CPU: the demo preset learns — on held-out phantom subjects pix2pix beats the
non-learned baseline's MAE and SSIM (SynthRAD metrics, HU, inside the body mask).

This is the smallest problem on which that claim was measured to hold (14 subjects of 64 x 64 x
32 at 3 x 3 x 5 mm, 1500 iterations: 81.5 vs 112.4 HU, docs/benchmarks.md). Smaller ones were
tried and do NOT beat the baseline in a minute of training (2-core CPU under load: 6 subjects at
32 px / 600 iterations 154 vs 116 HU; 8 subjects at 32 px with a 16-filter generator / 1500
iterations 172 vs 114 HU; 6 subjects at 48 px / 400 iterations 231 vs 118 HU): at 6 mm voxels the
skull, which MR cannot tell from air, is too thin for the generator's context. So the test keeps
this problem and drops what is not the learning claim (figures, translation: tested in
test_report_figures, test_readme_flows and test_engine_translate); ``bench/e2e_learning.py``
(``make bench-e2e``) runs the whole check with figures and a translation.
"""

import json

from gan_core.data.pack import pack_cohort
from gan_core.data.phantom import write_cohort
from gan_core.engine import load_model, train
from gan_core.eval.evaluate import evaluate
from gan_core.presets import preset
from gan_core.tasks import build_task


def test_demo_preset_beats_baseline_on_held_out_subjects(tmp_path):
    cohort, shards = tmp_path / "cohort", tmp_path / "shards"
    write_cohort(cohort, subjects=14, seed=0, shape=(64, 64, 32), spacing=(3.0, 3.0, 5.0),
                 lesion_prevalence=0.4)
    splits = pack_cohort(cohort, shards, seed=0)
    assert not set(splits["train"]) & set(splits["test"]) and len(splits["test"]) == 3
    res = train(preset("demo", "pix2pix"), shards, tmp_path / "run", progress=False)
    fw = load_model(res.model_path)
    report = evaluate({"pix2pix": fw}, build_task(fw.cfg.task), shards / "test", tmp_path / "eval",
                      train_shards=shards / "train", figures=0)
    agg = report["aggregate"]
    model, base = agg["pix2pix"]["mae"]["mean"], agg["baseline"]["mae"]["mean"]
    assert model < base, f"pix2pix MAE {model:.1f} HU is not below the baseline's {base:.1f} HU"
    assert agg["pix2pix"]["ssim"]["mean"] > agg["baseline"]["ssim"]["mean"]
    assert not report["failed"] and agg["pix2pix"]["n"] == 3
    json.loads((tmp_path / "eval" / "metrics.json").read_text())  # strict JSON
