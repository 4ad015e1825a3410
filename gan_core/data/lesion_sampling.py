"""Lesion-aware slice sampling: oversample training slices that contain a lesion.

Lesions are a tiny fraction of the training voxels (on the demo cohort: 151 of about 1 M, in 14
of 256 slices), so an L1 + GAN objective can smooth them away. :class:`LesionSampler` is an
:class:`~gan_core.data.shards.InfiniteSampler` whose keys point, with probability ``fraction``,
at a slice that holds lesion voxels (drawn uniformly among those), otherwise at the ordinary
permutation's slice. Like the plain sampler it is a pure function of ``(seed, epoch)``, so a
resumed run sees exactly the keys an uninterrupted one saw, and ranks shard the same stream.

``fraction`` is a share of the *samples*, not of the voxels: a lesion slice still holds mostly
healthy tissue.

>>> import numpy as np
>>> s = LesionSampler(10, paired=True, seed=0, lesion_positions=np.array([3]), fraction=0.5)
>>> keys = next(s.batches(1000)); 0.4 < float((keys[:, 1] == 3).mean()) < 0.6
True
>>> bool((keys[:, 1] == keys[:, 2]).all())  # paired: b follows a
True
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from gan_core.data.shards import InfiniteSampler, Shards, keyed_uniforms

__all__ = ["LesionSampler", "lesion_positions"]


def lesion_positions(shards: Shards, slices: Iterable[int], key: str = "lesion") -> np.ndarray:
    """Positions ``i`` in ``slices`` (the dataset's global slice indices, e.g.
    ``SliceDataset.slices``) whose slice holds at least one voxel of the ``key`` mask.

    Raises ValueError naming the shard folder when it has no ``key`` array.
    """
    arr = shards.arrays
    if key not in arr:
        raise ValueError(f"lesion sampling: {shards.dir} has no {key!r} array (has {sorted(arr)}); "
                         "pack the cohort with its lesion masks")
    sl = np.asarray(list(slices), np.int64)
    m = np.asarray(arr[key])
    has = m.reshape(m.shape[0], -1).any(axis=1)
    return np.flatnonzero(has[sl])


class LesionSampler(InfiniteSampler):
    """:class:`InfiniteSampler` whose slots each point at a lesion slice with probability
    ``fraction`` (see the module doc). ``lesion_positions``: dataset positions of lesion slices
    (:func:`lesion_positions`); empty or ``fraction == 0``: the plain sampler's stream."""

    #: salt of the keyed draws that pick the slots and slices (distinct from crop/flip draws)
    _SALT = 0x1E5105

    def __init__(self, n: int, *, paired: bool, lesion_positions: np.ndarray, fraction: float,
                 seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if not (0.0 <= float(fraction) <= 1.0):
            raise ValueError(f"lesion sampling fraction: expected a share in [0, 1], got {fraction!r}")
        pos = np.asarray(lesion_positions, np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise ValueError(f"lesion sampling: lesion positions must lie in [0, {n}), got "
                             f"{int(pos.min())}..{int(pos.max())}")
        super().__init__(n, paired=paired, seed=seed, rank=rank, world_size=world_size, start=start)
        self.positions, self.fraction = pos, float(fraction)

    def _epoch_keys(self, e: int) -> np.ndarray:
        keys = super()._epoch_keys(e)
        if not self.positions.size or self.fraction == 0.0:
            return keys
        # one draw per (epoch, rank, slot): which slots, and which lesion slice
        slot = np.arange(len(keys), dtype=np.int64)
        ids = np.stack([np.full(len(keys), e, np.int64), np.full(len(keys), self.rank, np.int64),
                        slot], 1)
        u = keyed_uniforms(self.seed ^ self._SALT, ids, 2)
        take = u[:, 0] < self.fraction
        pick = self.positions[np.minimum((u[:, 1] * self.positions.size).astype(np.int64),
                                         self.positions.size - 1)]
        keys = keys.copy()
        keys[take, 1] = pick[take]
        if self.paired:
            keys[take, 2] = pick[take]
        return keys
