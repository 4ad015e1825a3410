"""The unpaired benchmark (gan_core.data.unpaired): training MR and CT from disjoint subjects,
val/test truly paired; real phantom NIfTI files, real shards, the real unpaired sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gan_core.data.normalize import ct_to_unit
from gan_core.data.nifti import load_volume
from gan_core.data.pack import pack_cohort
from gan_core.data.phantom import TISSUES, write_cohort
from gan_core.data.shards import InfiniteSampler, Shards, SliceDataset, cohort_subjects
from gan_core.data.unpaired import (CT_STATS_FILE, cross_subjects, ct_tissue_stats, main,
                                    pack_unpaired)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("unpaired")
    write_cohort(d / "cohort", subjects=7, seed=0, shape=(32, 32, 16), spacing=(6.0, 6.0, 9.0))
    return d


def test_training_domains_come_from_disjoint_subjects(cohort):
    ids = pack_unpaired(cohort / "cohort", cohort / "unpaired", seed=0)
    paired = pack_cohort(cohort / "cohort", cohort / "paired", seed=0)
    # the same held-out subjects as the paired benchmark; every training subject in one domain
    assert ids["val"] == paired["val"] and ids["test"] == paired["test"]
    assert not set(ids["train_mr"]) & set(ids["train_ct"])
    assert sorted(ids["train_mr"] + ids["train_ct"]) == paired["train"]
    assert json.loads((cohort / "unpaired" / "unpaired.json").read_text())["train_ct"] == ids["train_ct"]
    sh = Shards(cohort / "unpaired" / "train")
    subs = {s.id: s for s in cohort_subjects(cohort / "cohort")}
    for i, entry in enumerate(sh.subjects):
        mr_id, ct_id = entry["id"].split("+")
        assert mr_id in ids["train_mr"] and ct_id in ids["train_ct"]
        slab = sh.subject_slab(i)
        ct = ct_to_unit(load_volume(subs[ct_id].ct).array)
        assert np.allclose(slab["ct"], np.moveaxis(ct, 2, 0), atol=1e-6)      # the CT subject's CT
        labels = load_volume(subs[mr_id].labels).array.astype(np.uint8)
        assert np.array_equal(slab["labels"], np.moveaxis(labels, 2, 0))     # the MR subject's labels
        own_ct = ct_to_unit(load_volume(subs[mr_id].ct).array)
        assert not np.allclose(slab["ct"], np.moveaxis(own_ct, 2, 0), atol=0.05)
    # val/test stay paired: their CT is their own
    test = Shards(cohort / "unpaired" / "test")
    own = ct_to_unit(load_volume(subs[test.subjects[0]["id"]].ct).array)
    assert np.allclose(test.subject_slab(0)["ct"], np.moveaxis(own, 2, 0), atol=1e-6)
    # the unpaired sampler draws from both domains of the cross subjects
    ds = SliceDataset(sh, image_size=16, flip=True)
    batch = [ds[k] for _, k in zip(range(4), InfiniteSampler(len(ds), paired=False, seed=0))]
    assert all(b["A"].shape == b["B"].shape == (1, 16, 16) for b in batch)


def test_errors_and_cli(cohort, capsys):
    subs = cohort_subjects(cohort / "cohort")
    with pytest.raises(ValueError, match="both the MR and the CT"):
        cross_subjects(subs[:2], subs[1:3])
    with pytest.raises(ValueError, match="at least one MR and one CT"):
        cross_subjects(subs[:2], [])
    with pytest.raises(ValueError, match="need >= 2"):
        pack_unpaired(cohort / "cohort", cohort / "bad", split=(0.2, 0.4, 0.4))
    assert main(["--cohort", str(cohort / "cohort"), "--out", str(cohort / "cli"), "--seed", "1"]) == 0
    assert "train_mr" in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["--cohort", str(cohort / "cohort"), "--out", str(cohort / "cli"), "--split", "1,2"])


def test_ct_tissue_stats_come_from_the_ct_domain_only(cohort):
    """The segment-consistency segmentor's statistics: written at pack time, from the CT-domain
    training subjects' own CTs and labels (no MR-domain, val or test subject), CT-like per tissue."""
    ids = pack_unpaired(cohort / "cohort", cohort / "stats", seed=0)
    doc = json.loads((cohort / "stats" / CT_STATS_FILE).read_text())
    assert doc["subjects"] == ids["train_ct"]
    subs = {s.id: s for s in cohort_subjects(cohort / "cohort")}
    assert {k: v for k, v in doc.items() if k != "subjects"} == \
        ct_tissue_stats([subs[i] for i in ids["train_ct"]])
    hu = dict(zip(doc["labels"], doc["mean_hu"]))
    assert hu[TISSUES["cortical_bone"]] > 700 and hu[TISSUES["fat"]] < -50
    assert abs(hu[TISSUES["air"]] + 1000) < 30 and 200 < hu[TISSUES["marrow"]] < 400
    assert abs(sum(doc["prior"]) - 1) < 1e-3
    unit = dict(zip(doc["labels"], doc["mean"]))
    assert unit[TISSUES["fat"]] == pytest.approx(float(ct_to_unit(hu[TISSUES["fat"]])), abs=1e-4)
    # another split's CT domain gives other numbers
    other = ct_tissue_stats([subs[i] for i in ids["train_mr"]])
    assert other["mean_hu"] != doc["mean_hu"]


def test_segment_consistency_trains_on_the_unpaired_pack(cohort, tmp_path):
    """The real loop reads the MR slices' labels for a source-label term (fw.batch_keys) and the
    CT segmentor travels in the checkpoint's config (fw.segment_stats)."""
    import torch

    from gan_core.engine import load_model, train
    from gan_core.presets import apply_overrides, preset, with_total_steps

    pack_unpaired(cohort / "cohort", cohort / "seg", seed=0)
    stats = (cohort / "seg" / CT_STATS_FILE).read_text()
    cfg = apply_overrides(with_total_steps(preset("tiny", "cyclegan"), 2),
                          {"loss.segment_consistency": 0.1, "loss.shape_consistency": 1.0,
                           "fw.segment_stats": stats, "data.image_size": 32, "val_every": 0})
    torch.set_num_threads(1)
    res = train(cfg, cohort / "seg", tmp_path / "run", device="cpu", progress=False)
    assert res.steps == 2
    fw = load_model(res.model_path, "cpu")
    assert fw.cfg.fw.segment_stats == stats and fw.cfg.loss.segment_consistency == 0.1
    assert "labels" in fw.batch_keys()
    terms = fw.extra_terms
    fake = fw.generate(torch.zeros(1, 1, 32, 32)).detach()
    air, bone = (terms(fake, fake, generated=fake, source=fake, prefix="x_",
                       labels=torch.full((1, 1, 32, 32), TISSUES[t]))["x_segment_consistency"]
                 for t in ("air", "cortical_bone"))
    assert abs(float(air) - float(bone)) > 1.0    # one flat output cannot be both tissues
    with pytest.raises(ValueError, match="tissue statistics"):
        train(apply_overrides(cfg, {"fw.segment_stats": ""}), cohort / "seg", tmp_path / "r2",
              device="cpu", progress=False, max_steps=1)


def test_unpaired_study_rows_carry_the_tissue_swap_gate(cohort):
    """bench/unpaired.py scores each run with the tissue-swap gate (gan_core.eval.tissue): the
    true CT passes with zero tissue error; a CT whose fat and cortical bone traded densities is
    flagged on every test subject."""
    import importlib.util
    from pathlib import Path

    from gan_core.presets import preset
    from gan_core.tasks import build_task

    path = Path(__file__).resolve().parents[1] / "bench" / "unpaired.py"
    spec = importlib.util.spec_from_file_location("bench_unpaired", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    pack_unpaired(cohort / "cohort", cohort / "gate", seed=0)
    task = build_task(preset("demo", "cyclegan").task)
    test = cohort / "gate" / "test"

    truth = study.summarise(study.score_model(lambda deg, slab: slab["ct"], test, task))
    assert truth["gate"] == "passed" and max(truth["tissue"].values()) < 1e-3

    def swapped(deg, slab):
        ct, lab = np.array(slab["ct"], np.float32), slab["labels"]
        fat, bone = lab == TISSUES["fat"], lab == TISSUES["cortical_bone"]
        ct[fat], ct[bone] = ct_to_unit(1100.0), ct_to_unit(-100.0)
        return ct

    rows = study.score_model(swapped, test, task)
    assert all(["fat", "cortical_bone"] in r["tissue_swaps"] for r in rows)
    assert study.summarise(rows)["gate"] == "flagged"


def test_unpaired_study_table_keeps_rows_of_other_code_apart():
    """bench/unpaired.table pools seeds of one (variant, steps) only among rows that ran on the
    same commit (``code``) and CPU kind (``host``): a row from other code or another CPU gets its
    own line, labelled with the commit and the CPU's instruction set."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "unpaired.py"
    spec = importlib.util.spec_from_file_location("bench_unpaired", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    tissue = {t: 1.0 for t in study.REPORT_TISSUES}

    def row(seed, mae, code=None):
        r = {"variant": "v", "seed": seed, "steps": 10, "train_s": 1.0, "mae": mae, "ssim": 0.5,
             "tissue": tissue}
        return r if code is None else {**r, "code": code}

    base = {"mae": 100.0, "ssim": 0.8, "tissue": tissue}
    other_cpu = {**row(2, 90.0, "abc1234"), "host": {"cpu": "x", "isa": "AVX2", "torch": "t"}}
    lines = study.table([row(0, 130.0), row(0, 260.0, "abc1234"), row(1, 700.0, "abc1234"),
                         other_cpu], base).splitlines()
    assert lines[2].startswith("| v | 1 | 10 | 1 | 130.0 |")
    assert lines[3].startswith("| v @abc1234 | 2 | 10 | 1 ± 0 | 480.0 ± 311.1 |")
    assert lines[4].startswith("| v @abc1234 (AVX2) | 1 | 10 | 1 | 90.0 |")   # another CPU kind
    assert lines[5].startswith("| baseline (paired fit) |")


def test_unpaired_variance_decomposition_adds_up():
    """bench/unpaired_variance.py splits a model's MAE into border + interior voxels and into
    per-tissue shares; both splits add up to the MAE, and an error only on tissue borders lands
    wholly in the border part. Its run-name patterns expand one brace group."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "unpaired_variance.py"
    spec = importlib.util.spec_from_file_location("bench_unpaired_variance", path)
    var = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(var)

    assert var.expand("a-s{0,1}-5,b") == ["a-s0-5", "a-s1-5", "b"]
    labels = np.full((2, 12, 12), TISSUES["soft_tissue"], np.int16)
    labels[:, 4:8, 4:8] = TISSUES["cortical_bone"]
    body = np.ones(labels.shape, bool)
    gt = np.where(labels == TISSUES["cortical_bone"], 1100.0, 40.0).astype(np.float32)
    rng = np.random.default_rng(0)
    pred = gt + rng.normal(0, 50, gt.shape).astype(np.float32)
    d = var.decompose(pred, gt, body, labels)
    assert d["border"] + d["interior"] == pytest.approx(d["mae"], rel=1e-5)
    assert sum(d["share"].values()) == pytest.approx(d["mae"], rel=1e-5)
    edge = var.border_mask(labels)
    only_edge = np.where(edge, gt + 300.0, gt)
    d = var.decompose(only_edge, gt, body, labels)
    assert d["interior"] == 0.0 and d["border"] == pytest.approx(d["mae"])
    assert 0 < d["border_fraction"] < 1


def test_unpaired_variance_oracle_paints_each_label_with_its_tissue_mean():
    """The oracle row of bench/unpaired_variance.py: every voxel gets its label's CT-domain mean."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "unpaired_variance.py"
    spec = importlib.util.spec_from_file_location("bench_unpaired_variance", path)
    var = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(var)
    stats = {"labels": [0, 3, 5], "mean_hu": [-1000.0, 1130.0, 8.5]}
    labels = np.array([[0, 3], [5, 3]], np.int16)
    np.testing.assert_array_equal(var.label_paint(labels, stats), [[-1000.0, 1130.0], [8.5, 1130.0]])


def test_medgan_train_reads_the_packs_ct_statistics_for_the_unpaired_preset(cohort, tmp_path,
                                                                           capsys):
    """``medgan train --preset unpaired`` on an unpaired pack: fw.segment_stats comes from the
    pack's ct_tissue_stats.json (in config.yaml and the model); a pack without it is named."""
    import shutil

    import torch

    from gan_core.cli import main as cli
    from gan_core.engine import load_model
    from gan_core.presets import load_config

    pack_unpaired(cohort / "cohort", cohort / "cli_train", seed=1)
    pack_unpaired(cohort / "cohort", cohort / "cli_train", seed=0)  # a rerun replaces the pack
    assert json.loads((cohort / "cli_train" / "unpaired.json").read_text())["seed"] == 0
    stats = (cohort / "cli_train" / CT_STATS_FILE).read_text()
    torch.set_num_threads(1)
    common = ["train", "--framework", "cyclegan", "--preset", "unpaired", "--steps", "2", "--quiet",
              "--set", "model.g_filters=4", "--set", "model.d_filters=4", "--set", "val_every=0",
              "--set", "data.image_size=32"]
    assert cli([*common, "--data", str(cohort / "cli_train"), "--out", str(tmp_path / "run")]) == 0
    assert load_config(tmp_path / "run" / "config.yaml").fw.segment_stats == stats
    fw = load_model(tmp_path / "run" / "model.pt", "cpu")
    assert fw.cfg.loss.tissue_value == 100.0 and fw.cfg.fw.segment_stats == stats
    bare = tmp_path / "bare"
    shutil.copytree(cohort / "cli_train", bare)
    (bare / CT_STATS_FILE).unlink()
    assert cli([*common, "--data", str(bare), "--out", str(tmp_path / "r2")]) != 0
    err = capsys.readouterr().err
    assert f"{bare / CT_STATS_FILE}: loss.segment_consistency / loss.tissue_value need" in err
