"""The fixed phantom benchmark behind ``docs/results.md``: every framework and application.

    python bench/results.py --workdir results_run --json results.json --markdown results.md

One cohort (the built-in phantom: ``--subjects`` subjects, ``--seed``, 64 x 64 x 32 voxels at
3 x 3 x 5 mm, split by subject 60/20/20) and, per experiment, the ``demo`` preset of each
framework (``--steps`` overrides its iterations); every model is scored on the held-out test
subjects beside the task's non-learned baseline. One failed experiment is reported, not fatal.
``--only unpaired`` runs the unpaired MR -> CT study instead (``bench/unpaired.py``: the unpaired
benchmark, the changes from the plain CycleGAN recipe to the ``structure`` preset; UNIT and
pix2pix vs CycleGAN on the paired benchmark with ``--variants``; ``--seeds``), mean ± sd over
seeds: ``python bench/results.py --only unpaired --steps 400 --seeds 0``.
Needs only gan_core + torch (+ scikit-image/scipy), so it also runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from gan_core.data.pack import pack_cohort  # noqa: E402
from gan_core.presets import apply_overrides, preset  # noqa: E402
from gan_core.data.phantom import write_cohort  # noqa: E402
from gan_core.eval.evaluate import evaluate  # noqa: E402
from gan_core.eval.report import results_table  # noqa: E402
from gan_core.tasks import build_task  # noqa: E402
from gan_core.engine import load_model, train  # noqa: E402

#: (section, task, task overrides, frameworks)
TRANSLATION = [
    ("MR -> CT", "mr2ct", {}, ("pix2pix", "cyclegan", "unit")),
    ("CT -> MR", "ct2mr", {}, ("pix2pix", "cyclegan", "unit")),
    ("k-space reconstruction, 4x random mask, centre 0.08", "kspace",
     {"task.acceleration": 4, "task.center_fraction": 0.08}, ("pix2pix",)),
    ("k-space reconstruction, 8x random mask, centre 0.04", "kspace",
     {"task.acceleration": 8, "task.center_fraction": 0.04}, ("pix2pix",)),
    ("Low-dose CT denoising (25% dose)", "lowdose", {"task.dose": 0.25}, ("pix2pix", "cyclegan")),
    ("MR super-resolution, 2x through-plane", "superres", {"task.factor": 2}, ("pix2pix",)),
    ("Tissue labels -> CT", "labels2ct", {}, ("pix2pix", "dcgan")),
]


def _config(framework: str, task: str, overrides: dict, steps: int | None):
    cfg = apply_overrides(preset("demo", framework, task), overrides) if overrides else preset("demo", framework, task)
    if steps:
        cfg = apply_overrides(cfg, {"optim.steps_constant": steps - steps // 2,
                                    "optim.steps_decay": steps // 2})
    return cfg


def _train(cfg, shards: Path, out: Path, device: str):
    t0 = time.perf_counter()
    res = train(cfg, shards, out, device=device, progress=False)
    return load_model(res.model_path, device), {"train_s": round(time.perf_counter() - t0, 1),
                                                "steps": res.steps, "val_mae": res.val_mae}


def run_translation(shards: Path, work: Path, steps: int | None, device: str, only: set[str]) -> list[dict]:
    out = []
    for title, task_name, overrides, frameworks in TRANSLATION:
        if only and task_name not in only:
            continue
        sec = {"title": title, "task": task_name, "overrides": overrides, "runs": {}}
        try:
            models = {}
            for fw_name in frameworks:
                cfg = _config(fw_name, task_name, overrides, steps)
                tag = f"{task_name}-{'-'.join(str(v) for v in overrides.values())}-{fw_name}".replace("--", "-")
                models[fw_name], sec["runs"][fw_name] = _train(cfg, shards, work / "runs" / tag, device)
                print(f"  {title}: {fw_name} trained in {sec['runs'][fw_name]['train_s']} s", flush=True)
            task = build_task(next(iter(models.values())).cfg.task)
            rep = evaluate(models, task, shards / "test", work / "eval" / task_name,
                           train_shards=shards / "train")
            sec.update(unit=rep["unit"], aggregate=rep["aggregate"], methods=rep["methods"],
                       failed=rep["failed"], table=results_table(rep))
            if "audit" in rep:
                sec["audit"] = {m: a.get("reason") for m, a in rep["audit"].items()}
        except Exception as exc:  # noqa: BLE001 - reported, the other experiments still run
            sec["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(sec.get("table", sec.get("error")), flush=True)
        out.append(sec)
    return out


def run_synthesis(shards: Path, work: Path, steps: int | None, device: str) -> dict:
    sec: dict = {"title": "Unconditional CT slice synthesis", "runs": {}}
    try:
        models = {}
        for fw_name in ("dcgan", "lapgan"):
            cfg = _config(fw_name, "synth", {"data.image_size": 64}, steps)  # whole slices
            models[fw_name], sec["runs"][fw_name] = _train(cfg, shards, work / "runs" / f"synth-{fw_name}", device)
        rep = evaluate(models, build_task(next(iter(models.values())).cfg.task), shards / "test",
                       work / "eval" / "synth", train_shards=shards / "train", seed=0, device=device)
        sec.update(rep)
    except Exception as exc:  # noqa: BLE001
        sec["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    print(sec.get("table", sec.get("error")), flush=True)
    return sec


def run_augmentation(shards: Path, work: Path, steps: int | None, device: str, n_real: int) -> dict:
    from gan_core.eval.augmentation import augmentation_table, run_augmentation_experiment

    sec: dict = {"title": "Augmentation with label-conditioned DCGAN slices"}
    try:
        cfg = _config("dcgan", "labels2ct", {}, steps)
        fw, sec["generator"] = _train(cfg, shards, work / "runs" / "augment-dcgan", device)
        rep = run_augmentation_experiment(shards / "train", shards / "test", fw.generate,
                                          n_real_subjects=n_real, n_synthetic=256, seed=0,
                                          repeats=3, device=device)
        sec.update(report=rep, table=augmentation_table(rep))
    except Exception as exc:  # noqa: BLE001
        sec["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    print(sec.get("table", sec.get("error")), flush=True)
    return sec


def run_unpaired_study(work: Path, steps: int | None, seeds: list[int], variants: list[str],
                       common: dict) -> dict:
    """The unpaired study of ``bench/unpaired.py`` (its own cohort packs under ``work``)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import unpaired as study  # bench/unpaired.py

    bench = study.build_benchmarks(work, 14, 0, (64, 64, 32), (3.0, 3.0, 5.0))
    base = study.baseline_scores(bench)
    rows = []
    for name in variants:
        for seed in seeds:
            try:
                rows.append(study.run_variant(name, seed, bench, work, steps, 1, common))
            except Exception as exc:  # noqa: BLE001 - reported, the others still run
                traceback.print_exc()
                rows.append({"variant": name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
    ok = [r for r in rows if "error" not in r]
    return {"title": "Unpaired MR -> CT (disjoint MR and CT training subjects)", "baseline": base,
            "rows": rows, "table": study.table(ok, base, variants),
            "errors": [r for r in rows if "error" in r]}


def markdown(res: dict) -> str:
    lines = [f"Measured {res['date']} on {res['machine']} (torch {res['torch']}), "
             f"{res['minutes']:.0f} min in all. Cohort: {res['cohort']}. Preset: {res['preset']}.", ""]
    for sec in res["translation"] + [res.get(k, {}) for k in ("synthesis", "augmentation", "unpaired")]:
        if not sec:
            continue
        lines += [f"### {sec['title']}", ""]
        if "error" in sec:
            lines += [f"Failed: `{sec['error']}`", ""]
            continue
        if sec.get("unit"):
            lines += [f"Test subjects, mean ± sd; unit of MAE: {sec['unit']}.", ""]
        lines += [sec["table"], ""]
        runs = sec.get("runs") or {}
        if runs:
            lines += ["Training: " + ", ".join(f"{k} {v['steps']} steps in {v['train_s']:.0f} s"
                                                for k, v in runs.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="results_run")
    p.add_argument("--subjects", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="iterations per model (default: the demo preset's)")
    p.add_argument("--only", action="append", default=[],
                   help="run only these parts (task names, synth, augment); repeatable")
    p.add_argument("--augment-real-subjects", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", default="0,1,2", help="unpaired study: training seeds")
    p.add_argument("--variants", default="", help="unpaired study: bench/unpaired.py VARIANTS "
                   "(default: the measured rows of docs/results.md)")
    p.add_argument("--set", action="append", default=[],
                   help="unpaired study: key=value override for every variant")
    p.add_argument("--json", default="results.json")
    p.add_argument("--markdown", default="results.md")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    t0 = time.perf_counter()
    work = Path(a.workdir)
    cohort, shards = work / "cohort", work / "shards"
    if not (shards / "test" / "index.json").exists():
        write_cohort(cohort, subjects=a.subjects, seed=a.seed, shape=(64, 64, 32),
                     spacing=(3.0, 3.0, 5.0), lesion_prevalence=0.4)
        pack_cohort(cohort, shards, seed=a.seed)
    splits = json.loads((shards / "splits.json").read_text())
    only = set(a.only)
    if only == {"unpaired"}:
        from gan_core.config import parse_set

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import unpaired as study

        variants = a.variants.split(",") if a.variants else study.MEASURED
        sec = run_unpaired_study(work, a.steps, [int(x) for x in a.seeds.split(",")], variants,
                                 parse_set(a.set))
        res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "machine": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
               "cohort": "phantom, 14 subjects, seed 0, 64x64x32 at 3x3x5 mm",
               "preset": f"see the table ({a.steps or 'preset'} steps)", "translation": [],
               "unpaired": sec, "minutes": (time.perf_counter() - t0) / 60}
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
        Path(a.markdown).write_text(markdown(res))
        print(sec["table"])
        return 0
    res = {"date": time.strftime("%Y-%m-%d"),
           "machine": (torch.cuda.get_device_name(0) if device.startswith("cuda")
                       else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"),
           "torch": torch.__version__,
           "cohort": (f"phantom, {a.subjects} subjects, seed {a.seed}, 64x64x32 at 3x3x5 mm, split "
                      f"{len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} "
                      f"(test: {', '.join(splits['test'])})"),
           "preset": f"demo ({'default steps' if not a.steps else f'{a.steps} steps'})",
           "translation": ([] if only and not only - {"synth", "augment"} else
                           run_translation(shards, work, a.steps, device, only - {"synth", "augment"}))}
    if not only or "synth" in only:
        res["synthesis"] = run_synthesis(shards, work, a.steps, device)
    if not only or "augment" in only:
        res["augmentation"] = run_augmentation(shards, work, a.steps, device, a.augment_real_subjects)
    res["minutes"] = (time.perf_counter() - t0) / 60
    Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    Path(a.markdown).write_text(markdown(res))
    print(f"wrote {a.json} and {a.markdown} ({res['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
