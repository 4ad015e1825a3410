"""The unpaired MR -> CT study behind ``docs/results.md``: what makes CycleGAN / UNIT learn.

    python bench/unpaired.py --workdir unpaired_run --variants plain,structure --steps 400
    python bench/unpaired.py --workdir unpaired_run --table          # the markdown table

One phantom cohort packed twice (``gan_core.data.unpaired``): the UNPAIRED benchmark (training MR
and CT from disjoint subjects, cross subjects ``<mr>+<ct>``) and the PAIRED one (``pack_cohort``,
the same subject split); val/test are the same truly paired subjects in both. Each variant is a
preset plus dotted overrides (:data:`VARIANTS`), trained per seed and scored on the test subjects:
SynthRAD MAE/PSNR/SSIM in HU inside the body and, per tissue of the phantom's label map, the
absolute error of the tissue's mean HU (a tissue swap shows as hundreds of HU on fat and bone).
The non-learned baseline (binned intensity regression) is fitted on the PAIRED training subjects
(it needs pairs; on the unpaired benchmark it is a stronger reference than anything unpaired).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan_core.data.normalize import unit_to_ct  # noqa: E402
from gan_core.data.pack import pack_cohort  # noqa: E402
from gan_core.data.phantom import TISSUES, write_cohort  # noqa: E402
from gan_core.data.shards import Shards  # noqa: E402
from gan_core.data.shards import cohort_subjects  # noqa: E402
from gan_core.data.unpaired import (CT_STATS_FILE, UNPAIRED_FILE, ct_tissue_stats,  # noqa: E402
                                    needs_target_stats, pack_unpaired)
from gan_core.engine import train  # noqa: E402
from gan_core.engine.infer import predict_volume  # noqa: E402
from gan_core.eval.metrics import score  # noqa: E402
from gan_core.eval.tissue import tissue_report  # noqa: E402
from gan_core.models import GENERATORS, ConvNetGenerator, register_generator  # noqa: E402
from gan_core.config import parse_set  # noqa: E402
from gan_core.presets import apply_overrides, preset, with_total_steps  # noqa: E402
from gan_core.tasks import build_task  # noqa: E402

#: tissues reported (label-map names; eye is left out: a few voxels per slab)
REPORT_TISSUES = ("air", "fat", "soft_tissue", "grey_matter", "white_matter", "csf",
                  "cortical_bone", "marrow", "sinus_air")

#: every screened CycleGAN variant runs at half the demo's width (CPU budget); ``structure`` has it
SCREEN: dict[str, Any] = {"model.g_filters": 16, "model.d_filters": 16, "data.batch_size": 4}
#: CycleGAN without the MR -> CT -> MR cycle and the identity term
NO_CYCLE_A: dict[str, Any] = {"fw.cycle_a": 0.0, "fw.identity": 0.0}
WHOLE: dict[str, Any] = {"data.image_size": 64, "data.batch_size": 2}
#: a U-Net generator for 64 px slices (4 levels: 4 px at the bottom), instance norm
UNET: dict[str, Any] = {"model.generator": "unet", "model.num_downs": 4, "model.norm": "instance"}
#: the CT segmentor term alone at lr 2e-3 (no adversarial, CT -> MR -> CT cycle or structure term)
SEGMENT_ONLY: dict[str, Any] = {"loss.segment_consistency": 1.0, "optim.lr": 2e-3, "loss.gan": 0.0,
                                "fw.cycle_b": 0.0, "loss.mind": 0.0, "loss.shape_consistency": 0.0}


def _cg(**changes: Any) -> tuple[str, str, dict[str, Any], str]:
    return ("cyclegan", "demo", {**SCREEN, **changes}, "unpaired")


#: name -> (framework, preset, overrides, benchmark); the rows of docs/results.md (400 steps)
VARIANTS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    # the demo objective as it was: the discriminator without normalisation (the defect)
    "plain": _cg(**{"model.d_norm": "none"}),
    "+shape_c": _cg(**NO_CYCLE_A, **{"loss.mind": 10.0, "loss.shape_consistency": 2.0}),
    "published+terms": _cg(**{"loss.mind": 2.0, "loss.shape_consistency": 1.0}),
    "no_cycle_a+terms": _cg(**NO_CYCLE_A, **{"loss.mind": 2.0, "loss.shape_consistency": 1.0}),
    "published+terms+whole": _cg(**WHOLE, **{"loss.mind": 2.0, "loss.shape_consistency": 1.0}),
    "no_cycle_a+terms+whole": _cg(**NO_CYCLE_A, **WHOLE,
                                  **{"loss.mind": 2.0, "loss.shape_consistency": 1.0}),
    # the same as no_cycle_a+terms+whole, from the named preset (400 steps by default)
    "structure": ("cyclegan", "structure", {}, "unpaired"),
    # + Zhang et al.'s shape consistency: a CT segmentor (per-tissue HU Gaussians fitted on the
    # CT domain's subjects, <pack>/ct_tissue_stats.json) must recover the MR's tissue labels
    "structure+segment0.1": ("cyclegan", "structure", {"loss.segment_consistency": 0.1}, "unpaired"),
    "structure+segment1": ("cyclegan", "structure", {"loss.segment_consistency": 1.0}, "unpaired"),
    "structure+segment5": ("cyclegan", "structure", {"loss.segment_consistency": 5.0}, "unpaired"),
    # the same with a ResNet-6 generator (two stride-2 stages: a wider field of view than the
    # full-resolution ConvNet's 13 px, for T1-dark bone vs CSF vs sinus air)
    "structure+segment5+resnet": ("cyclegan", "structure",
                                  {"loss.segment_consistency": 5.0, "model.generator": "resnet",
                                   "model.n_blocks": 6}, "unpaired"),
    # a wider field of view at full resolution: the ConvNet with doubling dilations
    # (CONTEXT_GENERATORS below: 1,2,4,8,16,1 = 65 px, a whole slice; 1,2,4,8,1,1 = 35 px)
    "structure+segment1+context": ("cyclegan", "structure",
                                   {"loss.segment_consistency": 1.0,
                                    "model.generator": "convnet_ctx65"}, "unpaired"),
    "structure+segment1+context35": ("cyclegan", "structure",
                                     {"loss.segment_consistency": 1.0,
                                      "model.generator": "convnet_ctx35"}, "unpaired"),
    # the same generator as structure+segment1, one optimisation change each
    "structure+segment1+lr2e-3": ("cyclegan", "structure",
                                  {"loss.segment_consistency": 1.0, "optim.lr": 2e-3}, "unpaired"),
    "structure+segment1+lr4e-3": ("cyclegan", "structure",
                                  {"loss.segment_consistency": 1.0, "optim.lr": 4e-3}, "unpaired"),
    "structure+segment1+lr8e-3": ("cyclegan", "structure",
                                  {"loss.segment_consistency": 1.0, "optim.lr": 8e-3}, "unpaired"),
    # the CT -> MR -> CT cycle (the only one left in `structure`) weakened / removed: a cycle
    # through a lossy MR lets G_B hide what T1 loses in faint patterns that G_A learns to decode
    # (Chu et al. 2017), which on a real, noisy MR would amplify its noise
    "structure+segment1+lr2e-3+cycle_b0.1": ("cyclegan", "structure",
                                             {"loss.segment_consistency": 1.0, "optim.lr": 2e-3,
                                              "fw.cycle_b": 0.1}, "unpaired"),
    "structure+segment1+lr2e-3+no_cycle": ("cyclegan", "structure",
                                           {"loss.segment_consistency": 1.0, "optim.lr": 2e-3,
                                            "fw.cycle_b": 0.0}, "unpaired"),
    # the demo preset's width (32 filters in G and D, `structure` halves them): capacity
    "structure+segment1+lr2e-3+wide": ("cyclegan", "structure",
                                       {"loss.segment_consistency": 1.0, "optim.lr": 2e-3,
                                        "model.g_filters": 32, "model.d_filters": 32}, "unpaired"),
    # the CT segmentor term alone (no adversarial, cycle or structure term): G_A trained as a
    # segmenter that paints the CT domain's tissue values; what the other terms add or cost
    "segment_only+lr2e-3": ("cyclegan", "structure", SEGMENT_ONLY, "unpaired"),
    # a U-Net generator (4 stride-2 levels with skips: a 64 px slice's context at full resolution
    # out), as Zhu et al.'s CycleGAN allows; the segmenter the oracle of unpaired_variance.py asks for
    "segment_only+lr2e-3+unet": ("cyclegan", "structure", {**SEGMENT_ONLY, **UNET}, "unpaired"),
    "structure+segment1+lr2e-3+unet": ("cyclegan", "structure",
                                       {"loss.segment_consistency": 1.0, "optim.lr": 2e-3, **UNET},
                                       "unpaired"),
    # + the generative form of the segmentor term (loss.tissue_value: L1 of G(mr) to the CT
    # domain's mean HU of the MR voxel's tissue): the classifier is flat inside each tissue's
    # interval of values, so it never asks for the value the MAE scores
    "structure+segment1+lr2e-3+value10": ("cyclegan", "structure",
                                          {"loss.segment_consistency": 1.0, "optim.lr": 2e-3,
                                           "loss.tissue_value": 10.0}, "unpaired"),
    "structure+segment1+lr2e-3+value100": ("cyclegan", "structure",
                                           {"loss.segment_consistency": 1.0, "optim.lr": 2e-3,
                                            "loss.tissue_value": 100.0}, "unpaired"),
    "structure+lr2e-3": ("cyclegan", "structure", {"optim.lr": 2e-3}, "unpaired"),
    "structure+lr2e-3+value100": ("cyclegan", "structure",
                                  {"optim.lr": 2e-3, "loss.tissue_value": 100.0}, "unpaired"),
    "structure+lr2e-3+value100+no_cycle": ("cyclegan", "structure",
                                           {"optim.lr": 2e-3, "loss.tissue_value": 100.0,
                                            "fw.cycle_b": 0.0}, "unpaired"),
    "structure+lr2e-3+value100+no_mind_shape": ("cyclegan", "structure",
                                                {"optim.lr": 2e-3, "loss.tissue_value": 100.0,
                                                 "loss.mind": 0.0, "loss.shape_consistency": 0.0},
                                                "unpaired"),
    # the value term with the adversarial term only (no cycle, structure or classifier term)
    "gan+value100+lr2e-3": ("cyclegan", "structure",
                            {**SEGMENT_ONLY, "loss.segment_consistency": 0.0, "loss.gan": 1.0,
                             "loss.tissue_value": 100.0}, "unpaired"),
    # the named presets (gan_core.presets: `structure` + loss.tissue_value 100, lr 2e-3, 2500 it)
    "unpaired": ("cyclegan", "unpaired", {}, "unpaired"),
    "unit_unpaired": ("unit", "unpaired", {}, "unpaired"),
    # the value term alone (no adversarial, cycle, structure or classifier term)
    "value_only+lr2e-3": ("cyclegan", "structure",
                          {**SEGMENT_ONLY, "loss.segment_consistency": 0.0,
                           "loss.tissue_value": 100.0}, "unpaired"),
    "structure+segment1+batch4": ("cyclegan", "structure",
                                  {"loss.segment_consistency": 1.0, "data.batch_size": 4},
                                  "unpaired"),
    # single changes not yet measured (for a GPU run)
    "d_norm": _cg(),
    "gradient_c": _cg(**NO_CYCLE_A, **WHOLE, **{"loss.mind": 2.0, "loss.shape_consistency": 1.0,
                                               "loss.gradient_consistency": 1.0}),
    "unit": ("unit", "demo", {}, "unpaired"),
    "unit_structure": ("unit", "structure", {}, "unpaired"),
    # UNIT with the CT segmentor term (as structure+segment1), then without the MR -> CT -> MR
    # cycle (the change that made CycleGAN's structure preset move)
    "unit_structure+segment1": ("unit", "structure", {"loss.segment_consistency": 1.0}, "unpaired"),
    "unit_structure+lr2e-3+value100": ("unit", "structure",
                                       {"optim.lr": 2e-3, "loss.tissue_value": 100.0}, "unpaired"),
    # the same with a latent at half resolution instead of a quarter (one downsampling): the
    # CT VAE's 4x-downsampled latent loses the one-voxel bone and sinus rings (unit_probe.py)
    "unit_structure+lr2e-3+value100+down1": ("unit", "structure",
                                             {"optim.lr": 2e-3, "loss.tissue_value": 100.0,
                                              "model.n_downsampling": 1}, "unpaired"),
    "unit_structure+segment1+no_cycle_a": ("unit", "structure", {"loss.segment_consistency": 1.0,
                                                                 "fw.cycle_a": 0.0}, "unpaired"),
    # the survey's paired claim: the same recipes on the paired benchmark
    "pix2pix_paired": ("pix2pix", "demo", {}, "paired"),
    "cyclegan_paired": ("cyclegan", "demo", {}, "paired"),
}

#: screened ConvNet dilation schedules that are not library generators (name -> dilations);
#: registered here so this study's runs can be trained and loaded
CONTEXT_GENERATORS: dict[str, tuple[int, ...]] = {"convnet_ctx65": (1, 2, 4, 8, 16, 1),
                                                   "convnet_ctx35": (1, 2, 4, 8, 1, 1)}
for _name, _dil in CONTEXT_GENERATORS.items():
    if _name not in GENERATORS:
        register_generator(_name, ConvNetGenerator, dilations=_dil)

#: the rows of docs/results.md, in order
MEASURED = ["plain", "+shape_c", "published+terms", "no_cycle_a+terms", "published+terms+whole",
            "no_cycle_a+terms+whole", "structure", "unpaired"]


#: phantom grids (shape, spacing in mm): the same field of view, two in-plane resolutions
GRIDS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "3mm": ((64, 64, 32), (3.0, 3.0, 5.0)),
    "1.5mm": ((128, 128, 32), (1.5, 1.5, 5.0)),
}


def build_benchmarks(work: Path, subjects: int, seed: int, shape: tuple[int, int, int],
                     spacing: tuple[float, float, float]) -> dict[str, Path]:
    """Write the phantom cohort once and pack it unpaired and paired (same subject split)."""
    cohort = work / "cohort"
    out = {"unpaired": work / "unpaired", "paired": work / "paired"}
    if not (cohort / "cohort.json").exists():
        write_cohort(cohort, subjects=subjects, seed=seed, shape=shape, spacing=spacing,
                     lesion_prevalence=0.4)
    if not (out["unpaired"] / "test" / "index.json").exists():
        pack_unpaired(cohort, out["unpaired"], seed=seed)
    if not (out["unpaired"] / CT_STATS_FILE).exists():  # a pack from before the stats file
        doc = json.loads((out["unpaired"] / UNPAIRED_FILE).read_text())
        subs = {s.id: s for s in cohort_subjects(cohort)}
        (out["unpaired"] / CT_STATS_FILE).write_text(json.dumps(
            {**ct_tissue_stats([subs[i] for i in doc["train_ct"]]), "subjects": doc["train_ct"]}))
    if not (out["paired"] / "test" / "index.json").exists():
        pack_cohort(cohort, out["paired"], seed=seed)
    return out


def tissue_errors(gt_hu: np.ndarray, pred_hu: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``|mean(pred) - mean(gt)|`` in HU per tissue of the label map (tissues present only)."""
    out = {}
    for name in REPORT_TISSUES:
        sel = labels == TISSUES[name]
        if sel.any():
            out[name] = float(abs(pred_hu[sel].mean() - gt_hu[sel].mean()))
    return out


def score_model(predict, test: Path, task) -> list[dict[str, Any]]:
    """Per test subject: mae/psnr/ssim (HU, body mask) and the per-tissue mean-HU errors."""
    sh = Shards(test)
    rows = []
    for i, s in enumerate(sh.subjects):
        slab = sh.subject_slab(i)
        deg = task.degrade(slab, np.random.default_rng([0, i]))
        pred = unit_to_ct(np.asarray(predict(deg, slab), np.float32))
        gt = unit_to_ct(np.asarray(slab["ct"], np.float32))
        row = {"subject": s["id"], **score(gt, pred, slab["mask"] > 0)}
        row["tissue"] = tissue_errors(gt, pred, slab["labels"])
        row["tissue_hu"] = {t: float(pred[slab["labels"] == TISSUES[t]].mean())
                            for t in REPORT_TISSUES if (slab["labels"] == TISSUES[t]).any()}
        rep = tissue_report(gt, pred, slab["labels"], slab["mask"] > 0)
        row["tissue_swaps"] = [sw["tissues"] for sw in rep["swaps"]]
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over subjects of each metric and tissue error."""
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("mae", "psnr", "ssim")}
    out["tissue"] = {t: float(np.mean([r["tissue"][t] for r in rows if t in r["tissue"]]))
                     for t in REPORT_TISSUES if any(t in r["tissue"] for r in rows)}
    if all("tissue_swaps" in r for r in rows):  # the tissue-swap gate (gan_core.eval.tissue)
        out["gate"] = "flagged" if any(r["tissue_swaps"] for r in rows) else "passed"
    out["tissue_hu"] = {t: float(np.mean([r["tissue_hu"][t] for r in rows if t in r["tissue_hu"]]))
                        for t in out["tissue"]}
    return out


def baseline_task(paired: Path):
    """The mr2ct task with its non-learned baseline fitted on the PAIRED pack's training subjects."""
    task = build_task(preset("demo", "cyclegan").task)
    train_sh = Shards(paired / "train")
    task.fit_baseline(train_sh.subject_slab(i) for i in range(len(train_sh.subjects)))
    return task


def baseline_scores(bench: dict[str, Path]) -> dict[str, Any]:
    task = baseline_task(bench["paired"])
    return summarise(score_model(lambda deg, slab: task.baseline(deg, slab),
                                 bench["paired"] / "test", task))


def _commit() -> str:
    """The last commit of the training code (``gan_core/``) in this checkout, ``-dirty`` when it
    has uncommitted changes there (``""`` outside git). GAN training at a high learning rate is
    chaotic, so a row is only reproducible on the code it ran on; commits elsewhere (docs, this
    script's table) do not split a study's rows."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        code = git("log", "-1", "--format=%h", "--", "gan_core")
        return code + ("-dirty" if git("status", "--porcelain", "--", "gan_core") else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def _host() -> dict[str, str]:
    """The CPU and torch a row ran on: the same code and seed land elsewhere on another CPU kind
    (its kernels sum in another order, and GAN training amplifies the difference)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def run_variant(name: str, seed: int, bench: dict[str, Path], work: Path, steps: int | None,
                threads: int, common: dict[str, Any] | None = None, grid: str = "3mm") -> dict[str, Any]:
    """Train variant ``name`` (with the ``common`` overrides first) on the benchmark packed on
    ``grid`` (:data:`GRIDS`, recorded in the row) and score it."""
    framework, preset_name, overrides, which = VARIANTS[name]
    overrides = {**(common or {}), **overrides}
    cfg = apply_overrides(preset(preset_name, framework), {**overrides, "seed": seed,
                                                           "val_every": 0})
    if needs_target_stats(cfg):
        # the CT segmentor: fitted on the CT domain's own subjects at pack time
        cfg = apply_overrides(cfg, {"fw.segment_stats":
                                    (bench[which] / CT_STATS_FILE).read_text()})
    if steps:
        cfg = with_total_steps(cfg, steps)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = train(cfg, bench[which], work / "runs" / f"{name}-s{seed}-{steps}", device="cpu",
                progress=False)
    train_s = time.perf_counter() - t0
    from gan_core.engine import load_model

    fw = load_model(res.model_path, "cpu")
    task = build_task(fw.cfg.task)
    rows = score_model(lambda deg, slab: predict_volume(fw, deg.image), bench[which] / "test", task)
    return {"variant": name, "seed": seed, "framework": framework, "preset": preset_name,
            "code": _commit(), "host": _host(), "grid": grid,
            "overrides": overrides, "benchmark": which, "steps": res.steps,
            "image_size": cfg.data.image_size, "batch_size": cfg.data.batch_size,
            "train_s": round(train_s, 1), "threads": threads, **summarise(rows), "per_subject": rows}


def _ms(values: list[float], digits: int = 0) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


TISSUE_SHORT = {"air": "air", "fat": "fat", "soft_tissue": "soft", "grey_matter": "GM",
                "white_matter": "WM", "csf": "CSF", "cortical_bone": "bone", "marrow": "marrow",
                "sinus_air": "sinus"}


def table(rows: list[dict[str, Any]], base: dict[str, Any], order: list[str] | None = None) -> str:
    """Markdown: per variant (rows grouped, in ``order``), MAE / SSIM and per-tissue mean-HU
    error, mean ± sd over seeds (each seed's value is the mean over the test subjects)."""
    names = order or list(dict.fromkeys(r["variant"] for r in rows))
    head = ["method", "seeds", "steps", "train s", "MAE (HU)", "SSIM"] + [TISSUE_SHORT[t] for t in REPORT_TISSUES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # one row per (variant, steps, code, CPU kind), in order of the variants, then of the steps;
    # rows that record the commit (``code``) and the CPU (``host``) they ran on are pooled only
    # with rows of the same code on the same kind of CPU
    def where(r: dict[str, Any]) -> tuple[str, str]:
        return r.get("code", ""), r.get("host", {}).get("isa", "")

    groups = [(name, steps, at) for name in names
              for steps in sorted({r["steps"] for r in rows if r["variant"] == name})
              for at in dict.fromkeys(where(r) for r in rows
                                      if r["variant"] == name and r["steps"] == steps)]
    for name, steps, (code, isa) in groups:
        rs = [r for r in rows if r["variant"] == name and r["steps"] == steps
              and where(r) == (code, isa)]
        label = name + (f" @{code}" if code else "") + (f" ({isa})" if isa else "")
        cells = [label, str(len(rs)), str(rs[0]["steps"]), _ms([r["train_s"] for r in rs]),
                 _ms([r["mae"] for r in rs], 1), _ms([r["ssim"] for r in rs], 3)]
        cells += [_ms([r["tissue"][t] for r in rs if t in r["tissue"]]) for t in REPORT_TISSUES]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["baseline (paired fit)", "-", "-", "-", f"{base['mae']:.1f}", f"{base['ssim']:.3f}"]
    cells += [f"{base['tissue'].get(t, float('nan')):.0f}" for t in REPORT_TISSUES]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="unpaired_run")
    p.add_argument("--variants", default=",".join(MEASURED))
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, help="iterations (default: the preset's)")
    p.add_argument("--subjects", type=int, default=14)
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="", help="JSON lines file (default <workdir>/results.jsonl)")
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    p.add_argument("--grid", choices=sorted(GRIDS), default="3mm",
                   help="phantom voxel grid: 3mm (64 x 64 x 32 of 3 x 3 x 5 mm, the benchmark) or "
                        "1.5mm (128 x 128 x 32 of 1.5 x 1.5 x 5 mm: the same heads, in-plane rings "
                        "twice as many voxels thick; use its own --workdir and "
                        "--set data.image_size=128 for whole slices)")
    p.add_argument("--set", action="append", default=[],
                   help="key=value override for every variant (e.g. model.g_filters=16)")
    a = p.parse_args(argv)
    work = Path(a.workdir)
    bench = build_benchmarks(work, a.subjects, a.seed, *GRIDS[a.grid])
    out = Path(a.out or work / "results.jsonl")
    base_file = work / "baseline.json"
    if not base_file.exists():
        base_file.write_text(json.dumps(baseline_scores(bench), indent=2))
    base = json.loads(base_file.read_text())
    if a.table:
        rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        print(table(rows, base, a.variants.split(",")))
        return 0
    print(f"baseline: MAE {base['mae']:.1f} HU  tissue {json.dumps({k: round(v) for k, v in base['tissue'].items()})}", flush=True)
    for name in a.variants.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            r = run_variant(name, seed, bench, work, a.steps, a.threads, parse_set(a.set), a.grid)
            with out.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"{name} s{seed}: {r['steps']} steps {r['train_s']:.0f}s  MAE {r['mae']:.1f}  "
                  f"SSIM {r['ssim']:.3f}  tissue {json.dumps({k: round(v) for k, v in r['tissue'].items()})}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
