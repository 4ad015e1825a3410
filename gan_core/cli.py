"""``medgan`` command line: phantom, pack, train, evaluate, translate, demo.

Everything below writes under ``medgan_local/`` (git-ignored); ``phantom_004`` is a test subject
of the seed-0 split (``medgan_local/shards/splits.json``), never seen in training:

    medgan phantom --out medgan_local/cohort --subjects 12 --seed 0
    medgan pack --cohort medgan_local/cohort --out medgan_local/shards
    medgan train --framework pix2pix --preset demo --data medgan_local/shards --out medgan_local/runs/pix2pix
    medgan train --framework pix2pix --task kspace --set task.acceleration=8 \
        --data medgan_local/shards --out medgan_local/runs/k8
    medgan evaluate --model medgan_local/runs/pix2pix --data medgan_local/shards --out medgan_local/eval
    medgan translate --model medgan_local/runs/pix2pix --input medgan_local/cohort/phantom_004/mr.nii.gz \
        --output medgan_local/sct.nii.gz
    medgan demo                      # all of it, into medgan_local/engine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gan_core.config import parse_set, save_config
from gan_core.presets import PRESETS, apply_overrides, load_config, preset, with_total_steps


def _frameworks() -> list[str]:
    from gan_core.frameworks import available

    return available()


def _tasks() -> list[str]:
    from gan_core.tasks import available

    return available()


def cmd_phantom(args: argparse.Namespace) -> int:
    from gan_core.data.phantom import run_phantom_cli

    paths = run_phantom_cli(args)
    print(f"wrote {len(paths)} subjects to {args.out}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from gan_core.data.pack import pack_cohort

    splits = pack_cohort(args.cohort, args.out, split=tuple(float(x) for x in args.split.split(",")),
                         seed=args.seed)
    print(json.dumps({k: len(v) for k, v in splits.items()}))
    return 0


def build_config(args: argparse.Namespace):
    cfg = load_config(args.config) if args.config else preset(args.preset, args.framework, args.task)
    overrides = parse_set(args.set)
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    return with_total_steps(cfg, args.steps) if args.steps is not None else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from gan_core.engine import train

    from gan_core.data.unpaired import CT_STATS_FILE, with_target_stats

    cfg = with_target_stats(build_config(args), Path(args.data) / CT_STATS_FILE)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(args.out) / "config.yaml")
    res = train(cfg, args.data, args.out, device=args.device, progress=not args.quiet)
    print(json.dumps({"model": str(res.model_path), "steps": res.steps, "seconds": round(res.seconds, 1),
                      "images_per_s": round(res.images_per_s, 2), "val_mae": res.val_mae}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gan_core.engine import load_model
    from gan_core.eval.evaluate import evaluate
    from gan_core.eval.report import results_table
    from gan_core.eval.viewer import VIEWER_FILE
    from gan_core.tasks import build_task

    models = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        fw = load_model(path, args.device)
        models[name or fw.name] = fw
    tasks = {fw.cfg.task.name for fw in models.values()}
    if len(tasks) > 1:
        raise ValueError(f"--model: the models were trained for different tasks {sorted(tasks)}")
    data = Path(args.data)
    task = build_task(next(iter(models.values())).cfg.task)
    report = evaluate(models, task, data / args.split, args.out,
                      train_shards=None if args.no_baseline else data / "train",
                      figures=args.figures, device=args.device)
    print(results_table(report))
    viewer = Path(args.out) / VIEWER_FILE
    if viewer.is_file():
        print(f"viewer report: {viewer} (open it in a browser; works offline)")
    if report["failed"]:
        print(f"{len(report['failed'])} subject(s) failed: "
              + "; ".join(f"{f['subject']}: {f['error']}" for f in report["failed"]), file=sys.stderr)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from gan_core.engine import translate_file

    out = translate_file(args.model, args.input, args.output, mask_path=args.mask,
                         batch_size=args.batch_size, device=args.device or "cpu", seed=args.seed,
                         degraded_input=args.degraded_input)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Phantom cohort -> shards -> pix2pix + CycleGAN on CPU -> evaluation vs baseline -> translate."""
    from gan_core.data.pack import pack_cohort
    from gan_core.data.phantom import write_cohort
    from gan_core.data.shards import Shards
    from gan_core.engine import load_model, train, translate_file
    from gan_core.eval.evaluate import evaluate
    from gan_core.eval.report import results_table
    from gan_core.tasks import build_task

    t0 = time.perf_counter()
    work = Path(args.workdir)
    cohort, shards = work / "cohort", work / "shards"
    print(f"[1/5] phantom cohort: {args.subjects} subjects -> {cohort}")
    write_cohort(cohort, subjects=args.subjects, seed=args.seed, shape=(64, 64, 32),
                 spacing=(3.0, 3.0, 5.0), lesion_prevalence=0.4)
    print(f"[2/5] pack shards by subject -> {shards}")
    splits = pack_cohort(cohort, shards, seed=args.seed)
    print("      " + json.dumps({k: len(v) for k, v in splits.items()}))
    models = {}
    for i, fw_name in enumerate(("pix2pix", "cyclegan")):
        cfg = preset("demo", fw_name)
        if args.steps:
            cfg = apply_overrides(cfg, {"optim.steps_constant": args.steps - args.steps // 2,
                                        "optim.steps_decay": args.steps // 2})
        print(f"[3/5] train {fw_name} ({cfg.total_steps} steps, batch {cfg.data.batch_size}, "
              f"{cfg.data.image_size}px)")
        res = train(cfg, shards, work / "runs" / fw_name, device=args.device)
        print(f"      {res.seconds:.0f}s, {res.images_per_s:.1f} img/s, val MAE {res.val_mae:.1f} HU")
        models[fw_name] = load_model(res.model_path)
    print("[4/5] evaluate on the held-out test subjects (SynthRAD metrics, HU, body mask)")
    report = evaluate(models, build_task(models["pix2pix"].cfg.task), shards / "test", work / "eval",
                      train_shards=shards / "train", figures=3)
    first = Shards(shards / "test").subject_files(0)
    out = translate_file(work / "runs" / "pix2pix", first.mr, work / "sct_pix2pix.nii.gz", mask_path=first.mask)
    print(f"[5/5] translated {first.mr} -> {out}")
    print()
    print(results_table(report))
    print(f"\nfigures: {work / 'eval' / 'figures'}   metrics: {work / 'eval' / 'metrics.json'}")
    print(f"demo wall time: {time.perf_counter() - t0:.0f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medgan", description="GANs for medical images (MR -> synthetic CT and more).")
    sub = p.add_subparsers(dest="command", required=True)

    from gan_core.data.phantom import add_phantom_args

    sp = sub.add_parser("phantom", help="write the built-in paired MR/CT phantom cohort (NIfTI)")
    add_phantom_args(sp)
    sp.set_defaults(func=cmd_phantom)

    sp = sub.add_parser("pack", help="split a cohort by subject and pack memory-mappable shards")
    sp.add_argument("--cohort", required=True, help="folder of <subject>/{mr,ct,mask}.nii.gz")
    sp.add_argument("--out", required=True, help="shard folder to write (train/ val/ test/)")
    sp.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions (by subject)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_pack)

    sp = sub.add_parser("train", help="train a framework on packed shards")
    sp.add_argument("--framework", default="cyclegan", choices=_frameworks())
    sp.add_argument("--preset", default="demo", choices=PRESETS)
    sp.add_argument("--task", default="mr2ct", choices=_tasks(),
                    help="what maps to what (gan_core.tasks); parameters via --set task.<field>=...")
    sp.add_argument("--config", help="YAML config (overrides --framework/--preset/--task)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. loss.image=50 (repeatable)")
    sp.add_argument("--steps", type=int, help="total iterations (half constant, half linear decay)")
    sp.add_argument("--data", required=True, help="shard folder (with train/ and optionally val/)")
    sp.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.pt, history.jsonl")
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="the task's metrics, baseline, audit (MR->CT: lesions) and figures")
    sp.add_argument("--model", required=True, action="append", metavar="[NAME=]PATH",
                    help="model.pt / run folder (repeatable)")
    sp.add_argument("--data", required=True, help="shard folder (baseline fitted on train/)")
    sp.add_argument("--split", default="test", choices=("train", "val", "test"))
    sp.add_argument("--out", required=True, help="folder for metrics.json, figures/ and report.html")
    sp.add_argument("--no-baseline", action="store_true")
    sp.add_argument("--figures", type=int, default=2,
                    help="PNG figures and the 3-D viewer report (report.html) of the first N subjects")
    sp.add_argument("--device", default="cpu")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("translate", help="a NIfTI of the model's task input -> its target NIfTI "
                                          "(MR -> synthetic CT in HU, k-space -> MR, ...)")
    sp.add_argument("--model", required=True, help="model.pt or run folder")
    sp.add_argument("--input", required=True,
                    help="input NIfTI: MR, CT (HU) or label map, as the model's task expects")
    sp.add_argument("--output", required=True,
                    help="NIfTI to write (CT targets: int16 HU; MR targets: float32 [0, 1]); "
                         "never the input or mask file")
    sp.add_argument("--mask", help="body mask NIfTI (default: computed from the input)")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--seed", type=int, default=0,
                    help="seed of the task's input degradation (e.g. the k-space sampling mask)")
    sp.add_argument("--degraded-input", action="store_true",
                    help="the input is already what the task restores (a real low-dose CT, a "
                         "thick-slice MR on the thin grid): no degradation is simulated on it")
    sp.set_defaults(func=cmd_translate)

    sp = sub.add_parser("demo", help="the whole CPU demo: phantom, train pix2pix + CycleGAN, evaluate")
    sp.add_argument("--workdir", default="medgan_local/engine",
                    help="where everything is written (default: medgan_local/engine, git-ignored)")
    sp.add_argument("--subjects", type=int, default=14)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps", type=int, help="override the demo preset's iterations")
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"medgan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
