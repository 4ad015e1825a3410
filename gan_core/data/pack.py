"""Pack a cohort's train/val/test shards and publish them together, or not at all.

A pack folder holds ``train/``, ``val/``, ``test/`` (shard folders, :mod:`gan_core.data.shards`)
and ``splits.json`` (the subject ids of each split). Every split is built in one staging folder
beside the pack and swapped in with a rename only when all of them are complete: a bad subject
in any split leaves the previous pack (or no pack) untouched, and a repack with another seed
never mixes its splits with an older pack's (no subject in two splits).

>>> # pack_cohort("cohort", "shards", seed=0)  ->  {"train": [...], "val": [...], "test": [...]}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gan_core.data.nifti import load_volume
from gan_core.data.shards import SubjectFiles, cohort_subjects, pack_shards, split_subjects
from gan_core.data.staging import remove_leftovers, staging_dir, swap_in

SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"


def _check_replaceable(out: Path, keep: Sequence[str] = ()) -> None:
    """Refuse to replace a folder that holds anything but a pack (the swap deletes it whole);
    ``keep``: more file names a pack of this kind writes beside its splits."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"pack output {out} is a file, expected a folder (or nothing)")
    legacy_tmp = tuple(f".{name}." for name in SPLITS)  # temp folders of older packs
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in (*SPLITS, SPLITS_FILE, *keep)
                     and not p.name.startswith(legacy_tmp))
    if foreign:
        raise ValueError(f"pack output {out} holds files that are not part of a shard pack "
                         f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                         "expected a new or empty folder, or an earlier pack to replace")


def pack_splits(splits: Mapping[str, Sequence[SubjectFiles]], out: str | Path, *,
                inplane: tuple[int, int] | None = None, keep: Sequence[str] = ()) -> dict[str, dict]:
    """Pack ``splits`` (``{"train": [...], "val": [...], "test": [...]}``) into ``out``.

    All splits are built in a staging folder beside ``out`` and published with one swap; on any
    error nothing changes under ``out``. Empty splits get no folder. Leftover temp folders of an
    interrupted pack are removed first. ``inplane`` as in :func:`pack_shards` (default: each
    split's largest subject). ``keep``: file names beside the splits that an earlier pack of
    this kind wrote (e.g. the unpaired pack's), so that pack can be replaced; the swap removes
    them. Returns the index of each packed split.

    >>> # pack_splits({"train": subjects[:4], "val": subjects[4:5], "test": subjects[5:]}, "shards")
    """
    out = Path(os.path.abspath(out))
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"pack {out}: unknown split(s) {unknown}, expected {', '.join(SPLITS)}")
    seen: dict[str, str] = {}
    for name in SPLITS:
        for s in splits.get(name, ()):
            if s.id in seen:
                raise ValueError(f"pack {out}: subject {s.id} is in both {seen[s.id]} and {name}")
            seen[s.id] = name
    if not seen:
        raise ValueError(f"pack {out}: no subjects given")
    _check_replaceable(out, keep)
    remove_leftovers(out)
    stage = staging_dir(out, "staging")
    try:
        indexes = {name: pack_shards(splits[name], stage / name, inplane=inplane,
                                     index_dir=out / name)
                   for name in SPLITS if splits.get(name)}
        ids = {name: [s.id for s in splits.get(name, ())] for name in SPLITS}
        (stage / SPLITS_FILE).write_text(json.dumps(ids, indent=2))
        swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return indexes


def lesion_strata(lesion_files: Mapping[str, str | os.PathLike | None]) -> dict[str, bool]:
    """Subject id -> True when its lesion mask file (``lesion.nii.gz``; None: the subject has
    none) marks a voxel: the strata of :func:`~gan_core.data.shards.split_subjects`."""
    return {sid: bool(f and np.any(load_volume(f, dtype=np.uint8).array))
            for sid, f in lesion_files.items()}


def split_cohort(subs: Mapping[str, SubjectFiles], split: tuple[float, float, float] = (0.6, 0.2, 0.2),
                 seed: int = 0) -> dict[str, list[str]]:
    """The subject split of a cohort (id -> files), stratified by lesion presence: the one split
    that the paired (:func:`pack_cohort`) and unpaired (``gan_core.data.unpaired``) benchmarks share."""
    return split_subjects(list(subs), split, seed,
                          strata=lesion_strata({i: s.lesion for i, s in subs.items()}))


def pack_cohort(cohort: str | Path, out: str | Path, *,
                split: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> dict[str, list[str]]:
    """Split a SynthRAD-layout cohort by subject and publish ``<out>/{train,val,test}`` shards.

    Returns the subject ids of each split (also written to ``<out>/splits.json``).

    >>> import tempfile
    >>> from gan_core.data.phantom import write_cohort
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_cohort(d / "cohort", subjects=3, seed=0, shape=(32, 32, 16), spacing=(6.0, 6.0, 9.0))
    >>> ids = pack_cohort(d / "cohort", d / "shards")
    >>> [len(ids[k]) for k in SPLITS], sorted(p.name for p in (d / "shards").iterdir())
    ([1, 1, 1], ['splits.json', 'test', 'train', 'val'])
    """
    subs = {s.id: s for s in cohort_subjects(cohort)}
    ids = split_cohort(subs, split, seed)
    pack_splits({name: [subs[i] for i in members] for name, members in ids.items()}, out)
    return ids
