"""Packed, memory-mappable training shards and the datasets that sample them.

A shard directory holds one split of a cohort, already normalised, as three ``.npy`` arrays of
axial slices stacked along the first axis (volumes ``(X, Y, Z)`` -> ``(Z, X, Y)``) and an index:

    mr.npy   float32 (N, H, W) in [-1, 1]      ct.npy  float32 (N, H, W) in [-1, 1]
    mask.npy uint8   (N, H, W)                 index.json  subjects, offsets, affines, sources
    labels.npy uint8 (N, H, W)  tissue labels, only when every subject has a labels file
    lesion.npy uint8 (N, H, W)  lesion masks, when any subject has a lesion file (the others: 0)

The index stores each subject's source NIfTI paths relative to the shard folder itself
(``../../cohort/s0/mr.nii.gz``), so a pack can be moved together with its sources and read from
any working directory; :meth:`Shards.subject_files` returns them as absolute paths.

Samples are read through ``np.load(mmap_mode="r")``: no NIfTI decompression per sample. Every
subject is padded/cropped in-plane to the same ``(H, W)``; depths may differ. 2D samples are
slices, 3D samples are patches cut from one subject's slab.

>>> # pack_shards([SubjectFiles("s0", "s0/mr.nii.gz", "s0/ct.nii.gz", "s0/mask.nii.gz")], "shards/train")
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from gan_core.data.normalize import ct_to_unit, mr_percentiles, mr_to_unit
from gan_core.data.staging import remove_leftovers, staging_dir, swap_in

SHARD_VERSION = 1


@dataclass
class SubjectFiles:
    """One subject of a cohort on disk (SynthRAD layout: mr, ct, mask; lesion optional)."""

    id: str
    mr: str
    ct: str
    mask: str
    lesion: str | None = None
    labels: str | None = None

    @classmethod
    def from_dir(cls, d: str | Path) -> "SubjectFiles":
        d = Path(d)
        missing = [n for n in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz") if not (d / n).exists()]
        if missing:
            raise FileNotFoundError(f"subject {d}: missing {', '.join(missing)} "
                                    "(expected mr.nii.gz, ct.nii.gz, mask.nii.gz)")
        lesion, labels = d / "lesion.nii.gz", d / "labels.nii.gz"
        return cls(d.name, str(d / "mr.nii.gz"), str(d / "ct.nii.gz"), str(d / "mask.nii.gz"),
                   str(lesion) if lesion.exists() else None, str(labels) if labels.exists() else None)


def cohort_subjects(root: str | Path) -> list[SubjectFiles]:
    """All subject folders under ``root`` (each with mr/ct/mask NIfTI), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cohort folder not found: {root}")
    subs = [SubjectFiles.from_dir(d) for d in sorted(root.iterdir())
            if d.is_dir() and (d / "mr.nii.gz").exists()]
    if not subs:
        raise FileNotFoundError(f"no subjects under {root} (expected <subject>/mr.nii.gz, ct.nii.gz, mask.nii.gz)")
    return subs


def split_subjects(ids: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                   seed: int = 0, *, strata: dict[str, bool] | None = None,
                   min_test_positive: int = 2) -> dict[str, list[str]]:
    """Split subject ids (never slices) into train/val/test with a seeded shuffle.

    Every split with a positive fraction gets at least one subject when there are enough.
    ``strata``: subject id -> True for a subject with lesions (every id must be there); the
    split is then stratified by lesion presence: each stratum is shuffled on its own, the test
    split receives ``min(min_test_positive, test size, lesion subjects)`` lesion subjects or its
    proportional share if larger, the validation split its proportional share (rounded) of the
    lesion subjects left, and train the rest, so a held-out audit always has lesions to keep.

    >>> ids = [f"s{i:02d}" for i in range(12)]
    >>> split = split_subjects(ids, seed=0, strata={s: s in ("s00", "s01", "s02") for s in ids})
    >>> sum(s in ("s00", "s01", "s02") for s in split["test"]), len(split["test"])
    (2, 2)
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers, got {fractions}")
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    total = sum(fractions)
    n = len(ids)
    n_val = max(1, round(n * fractions[1] / total)) if fractions[1] > 0 and n >= 3 else 0
    n_test = max(1, round(n * fractions[2] / total)) if fractions[2] > 0 and n >= 2 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} subjects are too few for splits {fractions}")
    shuffled = [ids[i] for i in order]
    if strata is None:
        return {"train": sorted(shuffled[:n_train]), "val": sorted(shuffled[n_train:n_train + n_val]),
                "test": sorted(shuffled[n_train + n_val:])}
    missing = [i for i in ids if i not in strata]
    if missing:
        raise ValueError(f"split strata: no lesion flag for subject(s) {missing[:5]} "
                         f"({len(missing)} of {n})")
    pos = [i for i in shuffled if strata[i]]
    neg = [i for i in shuffled if not strata[i]]
    t_pos = min(len(pos), n_test, max(int(min_test_positive), round(n_test * len(pos) / n)))
    t_pos = max(t_pos, n_test - len(neg))
    v_pos = min(len(pos) - t_pos, n_val, round(n_val * len(pos) / n))
    v_pos = max(v_pos, n_val - (len(neg) - (n_test - t_pos)))
    test = pos[:t_pos] + neg[:n_test - t_pos]
    val = pos[t_pos:t_pos + v_pos] + neg[n_test - t_pos:n_test - t_pos + n_val - v_pos]
    taken = set(test) | set(val)
    return {"train": sorted(i for i in ids if i not in taken), "val": sorted(val),
            "test": sorted(test)}


def _fit_inplane(a: np.ndarray, size: tuple[int, int], fill: float) -> tuple[np.ndarray, list[int]]:
    """Centre-crop/pad the first two axes of ``a`` to ``size``; returns the array and the offsets
    (pad_x, pad_y) — negative for a crop — so the original grid can be recovered."""
    out = np.full((size[0], size[1]) + a.shape[2:], fill, dtype=a.dtype)
    offs = []
    src, dst = [], []
    for ax in range(2):
        n, m = a.shape[ax], size[ax]
        off = (m - n) // 2
        offs.append(off)
        s0, d0 = max(0, -off), max(0, off)
        k = min(n - s0, m - d0)
        src.append(slice(s0, s0 + k))
        dst.append(slice(d0, d0 + k))
    out[dst[0], dst[1]] = a[src[0], src[1]]
    return out, offs


def _relative_source(s: SubjectFiles, index_dir: Path) -> dict:
    """``s`` as a dict with its file paths relative to ``index_dir`` (where the index is read)."""
    return {k: (os.path.relpath(os.path.abspath(v), index_dir) if isinstance(v, str) and k != "id"
                else v) for k, v in asdict(s).items()}


def pack_shards(subjects: Sequence[SubjectFiles], out_dir: str | Path, *,
                inplane: tuple[int, int] | None = None, index_dir: str | Path | None = None) -> dict:
    """Normalise and pack subjects into one shard directory (written to a temp dir, then renamed).

    ``inplane``: common slice size (default: the largest subject's). ``index_dir``: the folder
    the index will be read from once published (default ``out_dir``; :func:`gan_core.data.pack.
    pack_splits` writes into a staging folder first); source paths are stored relative to it.
    Temp folders left beside ``out_dir`` by an interrupted pack are removed first. Returns the
    index dict. To publish several splits together use :func:`gan_core.data.pack.pack_splits`.
    """
    from gan_core.data.nifti import check_same_grid, load_volume

    out_dir = Path(out_dir)
    index_dir = Path(os.path.abspath(index_dir if index_dir is not None else out_dir))
    if not subjects:
        raise ValueError(f"pack_shards({out_dir}): no subjects given")
    shapes = []
    for s in subjects:
        import nibabel as nib
        try:
            shp = nib.load(s.mr).shape
        except Exception as exc:  # noqa: BLE001 - reported with the file name
            raise ValueError(f"subject {s.id}: cannot read {s.mr}: {exc}") from exc
        shapes.append(shp[:3])
    if inplane is None:
        inplane = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    total = sum(s[2] for s in shapes)
    remove_leftovers(out_dir)
    tmp = staging_dir(out_dir, "tmp")
    try:
        mr_arr = np.lib.format.open_memmap(tmp / "mr.npy", "w+", np.float32, (total, *inplane))
        ct_arr = np.lib.format.open_memmap(tmp / "ct.npy", "w+", np.float32, (total, *inplane))
        mk_arr = np.lib.format.open_memmap(tmp / "mask.npy", "w+", np.uint8, (total, *inplane))
        with_labels = all(s.labels for s in subjects)
        lb_arr = (np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.uint8, (total, *inplane))
                  if with_labels else None)
        with_lesion = any(s.lesion for s in subjects)
        ls_arr = (np.lib.format.open_memmap(tmp / "lesion.npy", "w+", np.uint8, (total, *inplane))
                  if with_lesion else None)
        entries, off = [], 0
        for s in subjects:
            mr, ct = load_volume(s.mr, name=f"subject {s.id} MR"), load_volume(s.ct, name=f"subject {s.id} CT")
            mask = load_volume(s.mask, name=f"subject {s.id} mask")
            check_same_grid(mr, ct, names=(f"{s.id} MR", f"{s.id} CT"))
            check_same_grid(ct, mask, names=(f"{s.id} CT", f"{s.id} mask"))
            m = (mask.array > 0).astype(np.uint8)
            lo, hi = mr_percentiles(mr.array, m)
            mr_u, pads = _fit_inplane(mr_to_unit(mr.array, m), inplane, -1.0)
            ct_u, _ = _fit_inplane(ct_to_unit(ct.array), inplane, -1.0)
            m_u, _ = _fit_inplane(m, inplane, 0)
            z = mr.array.shape[2]
            mr_arr[off:off + z] = np.moveaxis(mr_u, 2, 0)
            ct_arr[off:off + z] = np.moveaxis(ct_u, 2, 0)
            mk_arr[off:off + z] = np.moveaxis(m_u, 2, 0)
            if lb_arr is not None:
                lab = load_volume(s.labels, name=f"subject {s.id} labels")
                check_same_grid(ct, lab, names=(f"{s.id} CT", f"{s.id} labels"))
                if lab.array.min() < 0 or lab.array.max() > 255 or not np.all(lab.array == np.round(lab.array)):
                    raise ValueError(f"subject {s.id}: {s.labels}: expected integer labels 0..255")
                lb_arr[off:off + z] = np.moveaxis(_fit_inplane(lab.array.astype(np.uint8), inplane, 0)[0], 2, 0)
            if ls_arr is not None:  # a subject without a lesion file has none marked
                les = np.zeros(m.shape, np.uint8)
                if s.lesion:
                    lvol = load_volume(s.lesion)
                    check_same_grid(ct, lvol, names=(f"{s.id} CT", f"{s.id} lesion"))
                    les = (lvol.array > 0).astype(np.uint8)
                ls_arr[off:off + z] = np.moveaxis(_fit_inplane(les, inplane, 0)[0], 2, 0)
            entries.append({"id": s.id, "offset": off, "depth": z, "shape": list(mr.array.shape),
                            "pad": pads, "affine": ct.affine.tolist(), "spacing": list(ct.spacing),
                            "mr_percentiles": [lo, hi], "source": _relative_source(s, index_dir)})
            off += z
        for a in (mr_arr, ct_arr, mk_arr, lb_arr, ls_arr):
            if a is not None:
                a.flush()
        del mr_arr, ct_arr, mk_arr, lb_arr, ls_arr
        index = {"version": SHARD_VERSION, "n_slices": total, "inplane": list(inplane),
                 "arrays": ["mr", "ct", "mask"] + (["labels"] if with_labels else [])
                 + (["lesion"] if with_lesion else []),
                 "subjects": entries}
        (tmp / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


class Shards:
    """Read side of a shard directory (arrays opened lazily, memory-mapped)."""

    def __init__(self, shard_dir: str | Path) -> None:
        self.dir = Path(shard_dir)
        idx_path = self.dir / "index.json"
        if not idx_path.exists():
            raise FileNotFoundError(f"not a shard directory (no index.json): {self.dir}")
        self.index = json.loads(idx_path.read_text())
        if self.index.get("version") != SHARD_VERSION:
            raise ValueError(f"{idx_path}: shard version {self.index.get('version')!r}, "
                             f"expected {SHARD_VERSION}")
        self.subjects: list[dict] = self.index["subjects"]
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:  # opened per process (DataLoader workers)
            names = self.index.get("arrays", ["mr", "ct", "mask"])
            self._arrays = {k: np.load(self.dir / f"{k}.npy", mmap_mode="r") for k in names}
            n = self.index["n_slices"]
            for k, a in self._arrays.items():
                if a.shape[0] != n:
                    raise ValueError(f"{self.dir / (k + '.npy')}: {a.shape[0]} slices, index says {n}")
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def subject_files(self, i: int) -> SubjectFiles:
        """Source NIfTI files of subject ``i`` as absolute paths, whatever the working directory.

        The index stores them relative to the shard folder (absolute in older packs: kept).
        """
        src = self.subjects[i]["source"]
        base = os.path.abspath(self.dir)
        return SubjectFiles(**{k: (os.path.normpath(os.path.join(base, v))
                                   if isinstance(v, str) and k != "id" else v)
                               for k, v in src.items()})

    def subject_slab(self, i: int) -> dict[str, np.ndarray]:
        s = self.subjects[i]
        sl = slice(s["offset"], s["offset"] + s["depth"])
        return {k: np.asarray(a[sl]) for k, a in self.arrays.items()}


class InfiniteSampler(Sampler):
    """Endless, seeded, resumable stream of ``(epoch, a, b)`` keys, sharded across ranks.

    Each epoch is a fresh permutation (seed, epoch); unpaired sampling draws ``b`` from an
    independent permutation. ``start`` skips that many keys of this rank's stream (exact resume).
    """

    def __init__(self, n: int, *, paired: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if n < world_size:
            raise ValueError(f"{n} samples cannot be sharded over {world_size} workers")
        self.n, self.paired, self.seed = n, paired, seed
        self.rank, self.world, self.start = rank, world_size, start
        self.per_epoch = n // world_size

    def _epoch(self, e: int) -> list[tuple[int, int, int]]:
        return [tuple(k) for k in self._epoch_keys(e).tolist()]

    def _epoch_keys(self, e: int) -> np.ndarray:
        """Epoch ``e`` of this rank's stream as an ``(per_epoch, 3)`` int64 array."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)
        pa = torch.randperm(self.n, generator=g)[self.rank::self.world][:self.per_epoch]
        pb = pa if self.paired else torch.randperm(self.n, generator=g)[self.rank::self.world][:self.per_epoch]
        return np.stack([np.full(self.per_epoch, e, np.int64), pa.numpy(), pb.numpy()], 1)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        e, skip = divmod(self.start, self.per_epoch)
        while True:
            yield from self._epoch(e)[skip:]
            e, skip = e + 1, 0

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The same stream as iterating, as consecutive ``(batch_size, 3)`` key arrays (a batch
        may span two epochs, as a ``DataLoader`` over this sampler batches it)."""
        e, skip = divmod(self.start, self.per_epoch)
        buf = self._epoch_keys(e)[skip:]
        while True:
            while len(buf) < batch_size:
                e += 1
                buf = np.concatenate([buf, self._epoch_keys(e)])
            yield buf[:batch_size]
            buf = buf[batch_size:]


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(seed: int, keys: np.ndarray, n: int = 3) -> np.ndarray:
    """``(len(keys), n)`` uniforms in [0, 1), a pure function of ``seed`` and each ``(epoch, a, b)``
    key: the randomness of a training sample (crop offsets, flip), vectorised over a batch.

    The same key gives the same numbers whether it is drawn alone (:class:`SliceDataset`) or in
    a batch (:class:`gan_core.data.batches.SliceBatches`), so a resumed run sees the crops an
    uninterrupted one saw.

    >>> u = keyed_uniforms(0, np.array([[0, 3, 3], [0, 4, 4]]))
    >>> u.shape, bool(((u >= 0) & (u < 1)).all()), bool((keyed_uniforms(0, np.array([[0, 4, 4]])) == u[1]).all())
    ((2, 3), True, True)
    """
    k = np.asarray(keys, np.int64).reshape(-1, 3).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(np.full(len(k), np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0x9E3779B97F4A7C15)))
        for j in range(3):
            h = _mix64(h ^ (k[:, j] * np.uint64(0xD1B54A32D192ED03) + np.uint64(j + 1)))
        cols = [_mix64(h + np.uint64(0x9E3779B97F4A7C15) * np.uint64(i + 1)) for i in range(n)]
    return (np.stack(cols, 1) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def crop_draws(seed: int, keys: np.ndarray, hw: tuple[int, int],
               size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per key: the crop's top-left ``(y, x)`` (uniform over the valid offsets; 0 when there is no
    crop) and whether it is flipped left-right (probability 1/2), from :func:`keyed_uniforms`."""
    h, w = hw
    u = keyed_uniforms(seed, keys, 3)
    if size is None or (size == h and size == w):
        zero = np.zeros(len(u), np.int64)
        return zero, zero.copy(), u[:, 2] < 0.5
    y = np.minimum((u[:, 0] * (h - size + 1)).astype(np.int64), h - size)
    x = np.minimum((u[:, 1] * (w - size + 1)).astype(np.int64), w - size)
    return y, x, u[:, 2] < 0.5


class _TaskInputs:
    """The task's network input per slice: straight from the memmap for identity tasks, computed
    once per subject and kept (LRU over ``cache_subjects``) for fixed degradations, or drawn per
    sample (k-space masks)."""

    def __init__(self, shards: Shards, task, seed: int, cache_subjects: int = 64) -> None:
        from gan_core.tasks import Task, build_task, task_config

        if task is None:
            task = build_task(task_config("mr2ct"))
        task.check_slab(shards.arrays, str(shards.dir))
        self.shards, self.task, self.seed, self.cache_subjects = shards, task, seed, cache_subjects
        self.identity = type(task).degrade is Task.degrade
        self.subject_of = np.zeros(shards.index["n_slices"], np.int64)
        for i, sub in enumerate(shards.subjects):
            self.subject_of[sub["offset"]:sub["offset"] + sub["depth"]] = i
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # batches are read by threads (gan_core.data.batches)

    def subject_input(self, i: int) -> np.ndarray:
        """``(C, Z, H, W)`` input of subject ``i`` (fixed degradations; cached)."""
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
            img = self.task.degrade(self.shards.subject_slab(i), np.random.default_rng([self.seed, i])).image
            self._cache[i] = img
            while len(self._cache) > self.cache_subjects:
                self._cache.popitem(last=False)
            return img

    def slices(self, z0: int, z1: int, rng: np.random.Generator | None) -> np.ndarray:
        """``(C, z1 - z0, H, W)`` input of global slices ``z0:z1`` (all of one subject)."""
        arr = self.shards.arrays
        if self.identity:
            return np.asarray(arr[self.task.source][z0:z1], np.float32)[None]
        if self.task.per_sample:
            rng = rng if rng is not None else np.random.default_rng([self.seed, z0, z1])
            return self.task.degrade({k: np.asarray(a[z0:z1]) for k, a in arr.items()}, rng).image
        i = int(self.subject_of[z0])
        off = self.shards.subjects[i]["offset"]
        return self.subject_input(i)[:, z0 - off:z1 - off]

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_cache": OrderedDict()}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


class SliceDataset(Dataset):
    """2D samples: ``{"A": input (C,H,W), "B": target (1,H,W), "mask": (1,H,W)}`` in [-1, 1].

    The task (default MR -> CT) says what ``A`` and ``B`` are (``gan_core.tasks``).
    Keys are ``(epoch, a, b)`` from ``InfiniteSampler`` or a plain int (paired, no augmentation).
    Paired: A and B from the same slice. Unpaired: B from slice ``b``. Random crop to
    ``image_size`` and a left-right flip, drawn by :func:`crop_draws` from the sample key
    (resumable); a per-sample degradation (k-space) draws from ``default_rng([seed, *key])``.
    Training reads whole batches through :class:`gan_core.data.batches.SliceBatches` instead.
    """

    def __init__(self, shards: Shards | str | Path, *, image_size: int | None = None,
                 flip: bool = False, min_body_fraction: float = 0.0, seed: int = 0,
                 task=None) -> None:
        self.shards = shards if isinstance(shards, Shards) else Shards(shards)
        self.image_size, self.flip, self.seed = image_size, flip, seed
        self.inputs = _TaskInputs(self.shards, task, seed)
        self.task = self.inputs.task
        frac = self.shards.arrays["mask"].reshape(self.shards.index["n_slices"], -1).mean(1)
        self.slices = np.flatnonzero(frac >= min_body_fraction)
        if self.slices.size == 0:
            raise ValueError(f"{self.shards.dir}: no slice has a body fraction >= {min_body_fraction}")

    def __len__(self) -> int:
        return int(self.slices.size)

    def _check_size(self) -> None:
        h, w = self.shards.index["inplane"]
        s = self.image_size
        if s is not None and (s > h or s > w):
            raise ValueError(f"image_size {s} is larger than the shard slices {h}x{w} in {self.shards.dir}")

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        """One sample; the reference for :class:`gan_core.data.batches.SliceBatches` (tested equal)."""
        arr = self.shards.arrays
        h, w = self.shards.index["inplane"]
        self._check_size()
        if isinstance(key, (int, np.integer)):
            epoch, a, b, rng = 0, int(key), int(key), None
            s = self.image_size
            y, x = ((h - s) // 2, (w - s) // 2) if s is not None else (0, 0)
            flip = False
        else:
            epoch, a, b = (int(v) for v in key)
            rng = np.random.default_rng([self.seed, epoch, a, b]) if self.task.per_sample else None
            ys, xs, fs = crop_draws(self.seed, np.array([[epoch, a, b]]), (h, w), self.image_size)
            y, x, flip = int(ys[0]), int(xs[0]), bool(fs[0]) and self.flip
        ia, ib = int(self.slices[a]), int(self.slices[b])
        s = self.image_size if self.image_size is not None else h
        sw = self.image_size if self.image_size is not None else w
        cut = (Ellipsis, slice(y, y + s), slice(x, x + sw))
        src = self.inputs.slices(ia, ia + 1, rng)[:, 0][cut]
        tgt, mask = arr[self.task.target][ib][cut], arr["mask"][ia][cut]
        extra = [arr["labels"][ia][cut]] if "labels" in arr else []
        if flip:
            src, tgt, mask = src[..., ::-1], tgt[:, ::-1], mask[:, ::-1]
            extra = [e[:, ::-1] for e in extra]
        t = lambda x: torch.from_numpy(np.array(x, dtype=np.float32))  # noqa: E731 - copy off the memmap
        out = {"A": t(src), "B": t(tgt)[None], "mask": t(mask)[None]}
        if extra:  # the A slice's tissue labels (shape loss, augmentation)
            out["labels"] = torch.from_numpy(np.array(extra[0], dtype=np.int64))[None]
        return out


class PatchDataset(Dataset):
    """3D samples: ``{"A": (C, D, H, W), "B", "mask": (1, D, H, W)}`` cut from one subject's slab."""

    def __init__(self, shards: Shards | str | Path, *, patch: tuple[int, int, int],
                 flip: bool = False, seed: int = 0, task=None) -> None:
        self.shards = shards if isinstance(shards, Shards) else Shards(shards)
        self.patch, self.flip, self.seed = patch, flip, seed
        self.inputs = _TaskInputs(self.shards, task, seed)
        self.task = self.inputs.task
        d, (h, w) = patch[0], self.shards.index["inplane"]
        too_small = [s["id"] for s in self.shards.subjects if s["depth"] < d]
        if too_small or patch[1] > h or patch[2] > w:
            raise ValueError(f"patch {patch} does not fit subjects {too_small or ''} "
                             f"(in-plane {h}x{w}) in {self.shards.dir}")

    def __len__(self) -> int:
        return len(self.shards.subjects)

    def _cut(self, i: int, rng: np.random.Generator, with_input: bool) -> dict[str, np.ndarray]:
        s = self.shards.subjects[i]
        d, h, w = self.patch
        H, W = self.shards.index["inplane"]
        z0 = s["offset"] + int(rng.integers(0, s["depth"] - d + 1))
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        arr = self.shards.arrays
        out = {k: arr[k][z0:z0 + d, y0:y0 + h, x0:x0 + w] for k in (self.task.target, "mask", "labels")
               if k in arr}
        if with_input:
            out["input"] = self.inputs.slices(z0, z0 + d, rng)[:, :, y0:y0 + h, x0:x0 + w]
        return out

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, a, b = (0, int(key), int(key)) if isinstance(key, (int, np.integer)) else key
        rng = np.random.default_rng([self.seed, epoch, a, b])
        pa = self._cut(a, rng, True)
        pb = pa if a == b else self._cut(b, rng, False)
        flip = self.flip and rng.random() < 0.5
        t = lambda x: torch.from_numpy(np.array(x[..., ::-1] if flip else x, dtype=np.float32))  # noqa: E731
        out = {"A": t(pa["input"]), "B": t(pb[self.task.target])[None], "mask": t(pa["mask"])[None]}
        if "labels" in pa:
            out["labels"] = t(pa["labels"])[None].long()
        return out
