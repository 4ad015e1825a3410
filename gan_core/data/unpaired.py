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

__all__ = ["UNPAIRED_FILE", "cross_subjects", "pack_unpaired", "main"]

#: written beside ``splits.json``: which subjects gave the training MR and CT domains
UNPAIRED_FILE = "unpaired.json"


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


def pack_unpaired(cohort: str | Path, out: str | Path, *,
                  split: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> dict[str, list[str]]:
    """Pack ``cohort`` as an unpaired benchmark into ``<out>/{train,val,test}`` (see the module
    docstring). The subject split is :func:`~gan_core.data.pack.split_cohort` (the same as
    ``pack_cohort`` with this seed), so val/test are those of the paired benchmark; the training
    subjects are shuffled (``seed``) and halved, MR domain first. Returns the split ids with
    ``train_mr`` / ``train_ct`` (also written to ``<out>/unpaired.json``)."""
    subs = {s.id: s for s in cohort_subjects(cohort)}
    ids = split_cohort(subs, split, seed)
    train = list(ids["train"])
    if len(train) < 2:
        raise ValueError(f"unpaired: {len(train)} training subject(s) under {cohort}; need >= 2 "
                         "(one per domain)")
    order = np.random.default_rng([seed, 1]).permutation(len(train))
    shuffled = [train[i] for i in order]
    n_mr = (len(shuffled) + 1) // 2
    mr_ids, ct_ids = sorted(shuffled[:n_mr]), sorted(shuffled[n_mr:])
    cross = cross_subjects([subs[i] for i in mr_ids], [subs[i] for i in ct_ids])
    pack_splits({"train": cross, "val": [subs[i] for i in ids["val"]],
                 "test": [subs[i] for i in ids["test"]]}, out)
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
