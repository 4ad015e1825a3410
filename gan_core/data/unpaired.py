"""An unpaired benchmark: MR and CT training domains from DISJOINT subjects; pairs only to score.

A cohort split by subject gives train/val/test. The training subjects are split again into an
MR set and a CT set (disjoint, seeded) and packed as "cross" subjects ``<mr id>+<ct id>``: the
MR (with its mask and the MR subject's tissue labels, the source domain's) of one subject and
the CT of another. The loader's unpaired sampler then draws each MR slice and each CT slice from
people who never share a scan, so nothing aligned is ever seen in training. Validation and test
subjects stay truly paired: they are only scored. Works with any loader that reads the standard
shard layout (:mod:`gan_core.data.shards`); the CT of a cross subject must be on the MR's grid
(the phantom's subjects of one cohort are).

>>> import tempfile
>>> from gan_core.data.phantom import write_cohort
>>> d = Path(tempfile.mkdtemp())
>>> _ = write_cohort(d / "cohort", subjects=5, seed=0, shape=(32, 32, 16), spacing=(6.0, 6.0, 9.0))
>>> ids = pack_unpaired(d / "cohort", d / "shards", split=(0.6, 0.2, 0.2), seed=0)
>>> len(ids["train_mr"]), len(ids["train_ct"]), set(ids["train_mr"]) & set(ids["train_ct"])
(2, 1, set())
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from gan_core.data.pack import pack_splits, split_cohort
from gan_core.data.shards import SubjectFiles, cohort_subjects

__all__ = ["UNPAIRED_FILE", "CT_STATS_FILE", "cross_subjects", "ct_tissue_stats",
           "domain_halves", "needs_target_stats", "write_ct_stats", "pack_unpaired",
           "with_target_stats", "main"]

#: written beside ``splits.json``: which subjects gave the training MR and CT domains
UNPAIRED_FILE = "unpaired.json"
#: written beside it: the CT domain's per-tissue value Gaussians (``loss.segment_consistency``'s
#: segmentor, :class:`gan_core.losses.TissueStats`), from the CT-domain subjects only
CT_STATS_FILE = "ct_tissue_stats.json"


def ct_tissue_stats(subjects: Sequence[SubjectFiles], trim: float = 1.0) -> dict[str, list]:
    """Per tissue label over the CTs (and labels) of ``subjects``: mean and sd of the values
    between the ``trim`` and ``100 - trim`` percentiles (partial-volume edges left out), in HU and
    in the [-1, 1] units the networks see, and the voxel fraction (``prior``). The mapping
    :class:`gan_core.losses.TissueStats` reads; ValueError if a subject has no labels."""
    from gan_core.data.nifti import load_volume
    from gan_core.data.normalize import ct_to_unit

    values: dict[int, list[np.ndarray]] = {}
    for s in subjects:
        if not s.labels:
            raise ValueError(f"unpaired: CT-domain subject {s.id} has no labels.nii.gz; the "
                             "segment-consistency statistics need the CT domain's tissue labels")
        ct = load_volume(s.ct).array
        lab = load_volume(s.labels, dtype=np.int64).array
        if ct.shape != lab.shape:
            raise ValueError(f"unpaired: {s.labels} has shape {lab.shape}, its CT {ct.shape}")
        for k in np.unique(lab):
            values.setdefault(int(k), []).append(ct[lab == k].astype(np.float64))
    total = sum(v.size for vs in values.values() for v in vs)
    out: dict[str, list] = {k: [] for k in ("labels", "mean", "sd", "prior", "mean_hu", "sd_hu")}
    for k in sorted(values):
        hu = np.concatenate(values[k])
        lo, hi = np.percentile(hu, [trim, 100.0 - trim])
        core = hu[(hu >= lo) & (hu <= hi)]
        unit = ct_to_unit(core).astype(np.float64)
        out["labels"].append(k)
        out["mean"].append(round(float(unit.mean()), 6))
        out["sd"].append(round(float(unit.std()), 6))
        out["prior"].append(round(hu.size / total, 6))
        out["mean_hu"].append(round(float(core.mean()), 1))
        out["sd_hu"].append(round(float(core.std()), 1))
    return out


def needs_target_stats(cfg) -> bool:
    """Whether ``cfg`` weights a term that needs the target domain's tissue statistics
    (``loss.segment_consistency``, ``loss.tissue_value``) and has none in ``fw.segment_stats``."""
    from gan_core.losses.table import TERMS

    return (any(t.needs_stats and getattr(cfg.loss, n) > 0 for n, t in TERMS.items())
            and not getattr(cfg.fw, "segment_stats", ""))


def with_target_stats(cfg, stats_file: str | Path):
    """``cfg`` with ``fw.segment_stats`` read from ``stats_file`` (an unpaired pack's
    ``ct_tissue_stats.json``) when :func:`needs_target_stats`; otherwise ``cfg`` unchanged. A
    missing or unreadable file is a ValueError naming it and the loss that needs it."""
    if not needs_target_stats(cfg):
        return cfg
    from gan_core.losses import TissueStats
    from gan_core.presets import apply_overrides

    path = Path(stats_file)
    if not hasattr(cfg.fw, "segment_stats"):
        raise ValueError(f"framework {cfg.framework!r} has no fw.segment_stats for the target "
                         "domain's tissue statistics (loss.segment_consistency / "
                         "loss.tissue_value are for cyclegan and unit)")
    try:
        text = path.read_text()
        TissueStats.parse(text)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: loss.segment_consistency / loss.tissue_value need the target "
                         f"domain's tissue statistics (an unpaired pack's {CT_STATS_FILE}, "
                         f"written by gan_core.data.unpaired): {e}") from None
    return apply_overrides(cfg, {"fw.segment_stats": text})


def domain_halves(train_ids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """The training subjects shuffled (``seed``) and halved: (MR domain, CT domain), each
    sorted; the MR half gets the odd one."""
    train = list(train_ids)
    order = np.random.default_rng([seed, 1]).permutation(len(train))
    shuffled = [train[i] for i in order]
    n_mr = (len(shuffled) + 1) // 2
    return sorted(shuffled[:n_mr]), sorted(shuffled[n_mr:])


def cross_subjects(mr: Sequence[SubjectFiles], ct: Sequence[SubjectFiles]) -> list[SubjectFiles]:
    """One cross subject per MR subject: its MR, mask, labels and lesion mask with the CT of a CT
    subject (cycled if the CT set is smaller); ValueError if the sets overlap or one is empty."""
    if not mr or not ct:
        raise ValueError(f"unpaired: need at least one MR and one CT training subject, got "
                         f"{len(mr)} and {len(ct)}")
    shared = sorted({s.id for s in mr} & {s.id for s in ct})
    if shared:
        raise ValueError(f"unpaired: subjects {shared} are in both the MR and the CT domain")
    return [SubjectFiles(f"{m.id}+{ct[i % len(ct)].id}", mr=m.mr, ct=ct[i % len(ct)].ct,
                         mask=m.mask, lesion=m.lesion, labels=m.labels)
            for i, m in enumerate(mr)]


def write_ct_stats(ct_subjects: Sequence[SubjectFiles], path: Path) -> None:
    """:func:`ct_tissue_stats` of ``ct_subjects`` (with their ids) to ``path``, atomically."""
    stats = ct_tissue_stats(ct_subjects)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**stats, "subjects": [s.id for s in ct_subjects]}))
    os.replace(tmp, path)


def pack_unpaired(cohort: str | Path, out: str | Path, *,
                  split: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> dict[str, list[str]]:
    """Pack ``cohort`` as an unpaired benchmark into ``<out>/{train,val,test}`` (see the module
    docstring). The subject split is :func:`~gan_core.data.pack.split_cohort` (the same as
    ``pack_cohort`` with this seed), so val/test are those of the paired benchmark; the training
    subjects are shuffled (``seed``) and halved, MR domain first. Returns the split ids with
    ``train_mr`` / ``train_ct`` (also written to ``<out>/unpaired.json``). When the CT-domain
    subjects have tissue labels, their per-tissue CT statistics (:func:`ct_tissue_stats`) go to
    ``<out>/ct_tissue_stats.json``: ``loss.segment_consistency``'s segmentor (pass its text as
    ``fw.segment_stats``)."""
    subs = {s.id: s for s in cohort_subjects(cohort)}
    ids = split_cohort(subs, split, seed)
    train = list(ids["train"])
    if len(train) < 2:
        raise ValueError(f"unpaired: {len(train)} training subject(s) under {cohort}; need >= 2 "
                         "(one per domain)")
    mr_ids, ct_ids = domain_halves(train, seed)
    cross = cross_subjects([subs[i] for i in mr_ids], [subs[i] for i in ct_ids])
    pack_splits({"train": cross, "val": [subs[i] for i in ids["val"]],
                 "test": [subs[i] for i in ids["test"]]}, out, keep=(UNPAIRED_FILE, CT_STATS_FILE))
    if all(subs[i].labels for i in ct_ids):
        write_ct_stats([subs[i] for i in ct_ids], Path(out) / CT_STATS_FILE)
    doc = {"train_mr": mr_ids, "train_ct": ct_ids, "val": ids["val"], "test": ids["test"],
           "train_subjects": [s.id for s in cross], "seed": seed}
    outp = Path(out)
    tmp = outp / f".{UNPAIRED_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, outp / UNPAIRED_FILE)
    return {k: v for k, v in doc.items() if k != "seed"}


def main(argv: list[str] | None = None) -> int:
    """``python -m gan_core.data.unpaired --cohort C --out S [--seed 0] [--split .6,.2,.2]``."""
    p = argparse.ArgumentParser(description="Pack a cohort as an unpaired benchmark (MR and CT "
                                            "training domains from disjoint subjects)")
    p.add_argument("--cohort", required=True, help="SynthRAD-layout cohort folder")
    p.add_argument("--out", required=True, help="pack folder (train/val/test shards)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions")
    a = p.parse_args(argv)
    try:
        fr = tuple(float(x) for x in a.split.split(","))
    except ValueError:
        p.error(f"--split: expected three numbers like 0.6,0.2,0.2, got {a.split!r}")
    if len(fr) != 3:
        p.error(f"--split: expected three numbers, got {a.split!r}")
    ids = pack_unpaired(a.cohort, a.out, split=fr, seed=a.seed)  # type: ignore[arg-type]
    print(json.dumps(ids, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
