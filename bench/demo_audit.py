"""Can the demo's pix2pix pass the lesion audit? Diagnose, then try one change at a time.

Works on the cohort ``make demo`` makes (the pipeline's defaults: 12 phantom subjects, seed 0,
lesion prevalence 0.4, misalign 4 mm, rigid registration, split 0.6/0.2/0.2), built by the
pipeline's own ingest and preprocess functions, and trains with the engine directly (no Ray,
KFP or MLflow), so one variant is one training of CPU minutes:

    python bench/demo_audit.py cohort --out medgan_local/demo_audit
    python bench/demo_audit.py diagnose --data medgan_local/demo_audit/prep/shards
    python bench/demo_audit.py run --data medgan_local/demo_audit/prep/shards --variant demo \
        --out medgan_local/demo_audit/runs --jsonl bench/data/demo_audit.jsonl

``run`` trains the ``demo`` preset of pix2pix with the variant's change (:data:`VARIANTS`), then
scores test, val and the lesion-bearing training subjects: MAE in HU and the lesion audit
(``gan_core.eval.metrics.lesion_audit``, border margin learned from the baseline on the training
split, as the evaluate step does), per lesion its true and synthetic contrast. One JSON line per
run (with the load average before and after) goes to ``--jsonl``.

Lesion-aware sampling (``lesion`` variants) uses :class:`gan_core.data.lesion_sampling.LesionSampler`.
The training loop has no option for it yet, so this script swaps it in for the loop's sampler
while it trains (``_lesion_sampling``); that is an experiment's hook, not the engine's API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: one change at a time from the demo recipe: config overrides, plus ``lesion_fraction`` (share of
#: training samples drawn from lesion slices) and ``steps``
VARIANTS: dict[str, dict[str, Any]] = {
    "demo": {},
    "steps3000": {"steps": 3000},
    "crop64": {"data.image_size": 64, "data.batch_size": 2},  # whole slices, same pixels per step
    "filters64": {"model.g_filters": 64},
    "layers12": {"model.g_layers": 12},  # receptive field 13 -> 25 px (39 -> 75 mm)
    "lesion25": {"lesion_fraction": 0.25},
    "lesion50": {"lesion_fraction": 0.5},
    # not one change: the changes that moved the training lesions most, together, to see what
    # a model that starts to fit its training lesions does with the held-out ones
    "crop64_lesion50_steps3000": {"data.image_size": 64, "data.batch_size": 2,
                                  "lesion_fraction": 0.5, "steps": 3000},
}


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------- cohort
def make_cohort(out: Path, subjects: int = 12, seed: int = 0) -> Path:
    """Ingest + preprocess exactly as the pipeline's defaults do; returns the shard folder."""
    from components.ingest import run_ingest
    from components.preprocess import run_preprocess

    run_ingest("phantom", str(out / "ingest"), subjects=subjects, seed=seed, lesion_prevalence=0.4,
               misalign_mm=4.0)
    run_preprocess(str(out / "ingest"), str(out / "prep"), register="rigid", seed=seed)
    return out / "prep" / "shards"


def _lesion_meta(shards: Path) -> dict[str, list[dict[str, Any]]]:
    """Phantom lesion list per subject id (kind, CT delta, T1 change, radius), when findable."""
    cohort = shards.parent.parent / "ingest" / "subjects" / "cohort.json"
    if not cohort.is_file():
        return {}
    data = json.loads(cohort.read_text())
    return {s["id"]: s.get("meta", s).get("lesions", []) for s in data["subjects"]}


# ------------------------------------------------------------------------------------ diagnose
def lesion_table(shards: Path) -> list[dict[str, Any]]:
    """Per true lesion of every split: tissue, voxels, CT contrast (HU) and MR relative contrast
    against a 2-voxel shell of its own tissue, plus the phantom's recorded kind."""
    from gan_core.data.shards import Shards
    meta = _lesion_meta(shards)
    rows = []
    for split in ("train", "val", "test"):
        sh = Shards(shards / split)
        for i, sub in enumerate(sh.subjects):
            slab = sh.subject_slab(i)
            les = slab["lesion"] > 0
            lab, n = ndimage.label(les)
            for j in range(1, n + 1):
                comp = lab == j
                major = int(np.bincount(slab["labels"][comp]).argmax())
                shell = (ndimage.binary_dilation(comp, iterations=2) & ~ndimage.binary_dilation(les)
                         & (slab["labels"] == major))
                hu = _hu(slab["ct"])
                rows.append({
                    "split": split, "subject": sub["id"], "voxels": int(comp.sum()),
                    "tissue": {6: "GM", 7: "WM"}.get(major, str(major)),
                    "ct_contrast_hu": float(hu[comp].mean() - hu[shell].mean()),
                    "mr_rel": float(slab["mr"][comp].mean() - slab["mr"][shell].mean()),
                    "slices": [int(z) for z in np.unique(np.nonzero(comp)[0])],
                })
    # attach the phantom's kinds in order of size where the counts agree
    by_sub: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_sub.setdefault(r["subject"], []).append(r)
    for sid, rs in by_sub.items():
        ms = meta.get(sid, [])
        if len(ms) == len(rs):
            for r, m in zip(sorted(rs, key=lambda r: r["voxels"]), sorted(ms, key=lambda m: m["voxels"])):
                r.update(kind=m["kind"], phantom_delta_hu=round(m["ct_delta_hu"], 1),
                         phantom_t1_change=round(m["t1_relative_change"], 2))
    return rows


def _hu(ct_norm: np.ndarray) -> np.ndarray:
    from gan_core.data.normalize import unit_to_ct

    return unit_to_ct(np.asarray(ct_norm, np.float32))


def crop_stats(shards: Path, cfg, lesion_fraction: float, samples: int) -> dict[str, float]:
    """Over the first ``samples`` training samples of ``cfg``: the share whose crop holds a lesion
    voxel, and lesion voxels as a share of all body voxels the crops hold."""
    from gan_core.data.lesion_sampling import LesionSampler, lesion_positions
    from gan_core.data.shards import InfiniteSampler, Shards, SliceDataset, crop_draws

    sh = Shards(shards / "train")
    ds = SliceDataset(sh, image_size=cfg.data.image_size, min_body_fraction=cfg.data.min_body_fraction)
    pos = lesion_positions(sh, ds.slices)
    if lesion_fraction > 0:
        smp = LesionSampler(len(ds), paired=True, seed=cfg.seed, lesion_positions=pos,
                            fraction=lesion_fraction)
    else:
        smp = InfiniteSampler(len(ds), paired=True, seed=cfg.seed)
    keys = next(smp.batches(samples))
    hw = tuple(sh.index["inplane"])
    y, x, _ = crop_draws(cfg.seed, keys, hw, cfg.data.image_size)
    les, body = np.asarray(sh.arrays["lesion"]) > 0, np.asarray(sh.arrays["mask"]) > 0
    s = cfg.data.image_size
    hit, lv, bv = 0, 0, 0
    for a, yy, xx in zip(keys[:, 1], y, x):
        z = ds.slices[a]
        lc = les[z, yy:yy + s, xx:xx + s].sum()
        hit += lc > 0
        lv += lc
        bv += body[z, yy:yy + s, xx:xx + s].sum()
    return {"lesion_slices": int(pos.size), "slices": int(len(ds)), "samples": samples,
            "crops_with_lesion": hit / samples, "lesion_voxel_share": lv / max(bv, 1)}


# ----------------------------------------------------------------------------------- training
@contextlib.contextmanager
def _lesion_sampling(fraction: float, train_dir: Path, min_body_fraction: float) -> Iterator[None]:
    """While inside: the training loop's slice sampler is a :class:`LesionSampler` (experiment
    hook; see the module doc)."""
    if fraction <= 0:
        yield
        return
    from gan_core.data.lesion_sampling import LesionSampler, lesion_positions
    from gan_core.data.shards import Shards, SliceDataset
    from gan_core.engine import loop

    sh = Shards(train_dir)
    pos = lesion_positions(sh, SliceDataset(sh, min_body_fraction=min_body_fraction).slices)
    original = loop.InfiniteSampler

    def factory(n: int, **kw: Any) -> LesionSampler:
        return LesionSampler(n, lesion_positions=pos, fraction=fraction, **kw)

    loop.InfiniteSampler = factory
    try:
        yield
    finally:
        loop.InfiniteSampler = original


def variant_config(name: str):
    from gan_core.presets import apply_overrides, preset, with_total_steps

    spec = dict(VARIANTS[name])
    steps = spec.pop("steps", None)
    frac = float(spec.pop("lesion_fraction", 0.0))
    cfg = preset("demo", "pix2pix")
    cfg = apply_overrides(cfg, spec) if spec else cfg
    cfg = with_total_steps(cfg, steps) if steps else cfg
    return cfg, frac


def train_variant(shards: Path, name: str, out: Path) -> dict[str, Any]:
    from gan_core.engine import train

    cfg, frac = variant_config(name)
    load0 = _load()
    with _lesion_sampling(frac, shards / "train", cfg.data.min_body_fraction):
        res = train(cfg, shards, out / name, device="cpu", progress=False)
    return {"variant": name, "change": VARIANTS[name], "steps": res.steps,
            "train_s": round(res.seconds, 1), "load_before": load0, "load_after": _load(),
            "val_mae_train_loop": res.val_mae, "model": str(res.model_path)}


# ---------------------------------------------------------------------------------- scoring
def score(shards: Path, models: dict[str, Any]) -> dict[str, Any]:
    """MAE and lesion audit of each model (and the baseline) on test, val and the lesion-bearing
    training subjects."""
    from gan_core.data.shards import Shards
    from gan_core.engine.infer import predict_volume
    from gan_core.eval.evaluate import _slab_spacing
    from gan_core.tasks import build_task

    task = build_task(next(iter(models.values())).cfg.task)
    tr = Shards(shards / "train")
    task.fit_baseline(tr.subject_slab(i) for i in range(len(tr.subjects)))
    task.fit_audit((tr.subject_slab(i), _slab_spacing(s)) for i, s in enumerate(tr.subjects))
    out: dict[str, Any] = {"border_margin_mm": task.border_margin["margin_mm"] if task.border_margin else None}
    for split in ("test", "val", "train"):
        sh = Shards(shards / split)
        rows = []
        for i, sub in enumerate(sh.subjects):
            slab = sh.subject_slab(i)
            if split == "train" and not (slab["lesion"] > 0).any():
                continue
            deg = task.degrade(slab, np.random.default_rng([0, i]))
            preds = {n: task.postprocess(predict_volume(fw, deg.image), deg) for n, fw in models.items()}
            preds["baseline"] = task.baseline(deg, slab)
            sp = _slab_spacing(sub)
            row: dict[str, Any] = {"subject": sub["id"]}
            for n, p in preds.items():
                m = task.metrics(p, slab)
                a = task.audit(p, slab, sp)
                row[n] = {"mae": round(float(m["mae"]), 2), "passed": a["passed"],
                          "kept": a["n_preserved"], "evaluable": a["n_evaluable"],
                          "removed": a["n_removed"], "invented": a["n_invented"],
                          "lesions": [{"tc": None if e["true_contrast"] is None else round(e["true_contrast"], 1),
                                       "pc": None if e["pred_contrast"] is None else round(e["pred_contrast"], 1),
                                       "status": e["status"]} for e in a["lesions"]]}
            rows.append(row)
        out[split] = rows
    return out


def summarise(scored: dict[str, Any], name: str) -> dict[str, Any]:
    """Per split: mean MAE, kept/evaluable, invented, for model ``name``."""
    s: dict[str, Any] = {}
    for split in ("test", "val", "train"):
        rows = scored.get(split, [])
        if not rows:
            continue
        r = [row[name] for row in rows]
        s[split] = {"mae": round(float(np.mean([x["mae"] for x in r])), 1),
                    "kept": sum(x["kept"] for x in r), "evaluable": sum(x["evaluable"] for x in r),
                    "invented": sum(x["invented"] for x in r),
                    "passed": all(x["passed"] for x in r),
                    "contrasts": [(le["tc"], le["pc"]) for x in r for le in x["lesions"]]}
    return s


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per run: change, MAE (test, baseline), kept/evaluable and invented per split,
    the test lesions' synthetic contrasts, train seconds and load average."""
    def ki(s: dict[str, Any]) -> str:
        return f"{s['kept']}/{s['evaluable']}, {s['invented']}"

    lines = ["| variant | change | test MAE (baseline) | test kept/eval., invented | val | train subj. | "
             "test lesions tc -> pc (HU) | train s | load (1-min, before/after) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        p, b = r["pix2pix"], r["baseline"]
        change = ", ".join(f"{k}={v}" for k, v in r["change"].items()) or "(demo preset)"
        pcs = ", ".join(f"{tc:+.0f} -> {pc:+.0f}" for tc, pc in p["test"]["contrasts"])
        lines.append(f"| {r['variant']} | {change} | {p['test']['mae']} ({b['test']['mae']}) | "
                     f"{ki(p['test'])} | {ki(p['val'])} | {ki(p['train'])} | {pcs} | {r['train_s']:.0f} | "
                     f"{r['load_before'].split()[0]} / {r['load_after'].split()[0]} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cohort", help="ingest + preprocess as the pipeline's defaults do")
    c.add_argument("--out", required=True)
    c.add_argument("--subjects", type=int, default=12)
    c.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("diagnose", help="lesion table, crop statistics (and a model's contrasts)")
    d.add_argument("--data", required=True, help="shard folder")
    d.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    d.add_argument("--samples", type=int, default=12000, help="training samples (1500 steps x 8)")
    r = sub.add_parser("run", help="train one variant and score it")
    r.add_argument("--data", required=True)
    r.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    r.add_argument("--out", required=True, help="folder for the run folders")
    r.add_argument("--jsonl", help="append the result as one JSON line here")
    r.add_argument("--trained", metavar="RUN_DIR",
                   help="score this finished run of the variant's config instead of training "
                        "(e.g. one trained by `medgan train`); with --train-s and --load")
    r.add_argument("--train-s", type=float, help="with --trained: its measured training seconds")
    r.add_argument("--load", default="", help="with --trained: 1-min load average before/after it trained, e.g. '3.5/12.5'")
    t = sub.add_parser("table", help="markdown table of the runs in a --jsonl file")
    t.add_argument("jsonl")
    args = p.parse_args(argv)

    if args.cmd == "table":
        print(markdown_table([json.loads(line) for line in Path(args.jsonl).read_text().splitlines()
                              if line.strip()]))
        return 0

    if args.cmd == "cohort":
        print(make_cohort(Path(args.out), args.subjects, args.seed))
        return 0
    data = Path(args.data)
    if args.cmd == "diagnose":
        rows = lesion_table(data)
        for row in rows:
            print(json.dumps(row))
        # what any function of the lesion's own T1 contrast, fitted to the training lesions,
        # says about the held-out ones: the nearest training lesion in MR contrast
        train = [r for r in rows if r["split"] == "train"]
        for r in rows:
            if r["split"] != "train" and train:
                nn = min(train, key=lambda t: abs(t["mr_rel"] - r["mr_rel"]))
                print(json.dumps({"held_out": f"{r['split']} {r['subject']} {r.get('kind', '?')}",
                                  "mr_rel": round(r["mr_rel"], 2), "ct_contrast_hu": round(r["ct_contrast_hu"], 1),
                                  "nearest_training_lesion": f"{nn['subject']} {nn.get('kind', '?')}",
                                  "its_mr_rel": round(nn["mr_rel"], 2),
                                  "its_ct_contrast_hu": round(nn["ct_contrast_hu"], 1)}))
        for name, frac in (("demo", 0.0), ("crop64", 0.0), ("lesion25", 0.25), ("lesion50", 0.5)):
            cfg, _ = variant_config(name)
            print(json.dumps({"sampling": name, **crop_stats(data, cfg, frac, args.samples)}))
        if args.model:
            from gan_core.engine import load_model

            models = {spec.split("=", 1)[0]: load_model(spec.split("=", 1)[1]) for spec in args.model}
            scored = score(data, models)
            for name in [*models, "baseline"]:
                print(json.dumps({"method": name, **summarise(scored, name)}))
        return 0
    from gan_core.engine import load_model

    if args.trained:
        run = Path(args.trained)
        cfg, _ = variant_config(args.variant)
        rec = {"variant": args.variant, "change": VARIANTS[args.variant], "steps": cfg.total_steps,
               "train_s": args.train_s, "load_before": args.load.split("/")[0] or "?",
               "load_after": args.load.split("/")[-1] or "?",
               "model": str(run / "model.pt"), "trained_by": "medgan train (scored here)"}
    else:
        rec = train_variant(data, args.variant, Path(args.out))
    t0 = time.perf_counter()
    scored = score(data, {"pix2pix": load_model(rec["model"])})
    rec.update(score_s=round(time.perf_counter() - t0, 1), pix2pix=summarise(scored, "pix2pix"),
               baseline=summarise(scored, "baseline"), border_margin_mm=scored["border_margin_mm"],
               detail=scored)
    print(json.dumps({k: v for k, v in rec.items() if k != "detail"}))
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
