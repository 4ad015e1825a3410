"""Training batches of 2D slices: crop windows copied on the host, flipped on the host (CPU) or device.

:class:`SliceBatches` turns a batch of sampler keys ``(epoch, a, b)`` into the tensors a
framework trains on, with the same values as stacking :class:`~gan_core.data.shards.SliceDataset`
samples of those keys (tested), but:

- the host copies only each sample's crop window off the memory map (one strided view and one
  torch copy per sample and array, no whole-slice gather; torch releases the GIL there, so
  reader threads run in parallel) into reused host buffers (pinned on CUDA); a degradation is
  still computed per sample through the shards' task inputs;
- on a CPU device the left-right flip happens in that same pass (a flip of the window view)
  and the host buffers ARE the batch: a buffer is reused only once nothing holds a tensor of it
  any more (its reference count), else a fresh one is made, so a batch kept by its consumer is
  never overwritten; on an accelerator the flip runs on the device;
- only the arrays the framework uses cross to the device (``A`` and ``B``; ``labels`` and
  ``mask`` when asked), in their packed dtype (``mask`` / ``labels`` as uint8, not float32/int64),
  converted to float on the device;
- crop offsets and flips come from :func:`~gan_core.data.shards.crop_draws` (keyed on the sample,
  vectorised): the same values as :class:`~gan_core.data.shards.SliceDataset` (tested equal);
- ``crop_on_host=False`` reads whole slices (``np.take``) and crops on the device instead;
- ``resident=True`` keeps the needed arrays of the whole split on the device (A and B as int16
  with a scale, max error 1/65534 of the [-1, 1] range; masks/labels as uint8): a batch is then
  one gather on the device, keyed exactly like the streamed one.

:func:`prefetch` reads batches ahead in threads (the copies and the memory map's page faults
release the GIL), each into its own slot of a fixed ring of host buffers: buffers are reused,
not re-allocated per batch.

>>> # sb = SliceBatches(Shards("shards/train"), image_size=256, flip=True, seed=0, task=task,
>>> #                   device="cuda")
>>> # for batch in prefetch(sb, sampler.batches(32), workers=2): fw.train_step(batch)
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from gan_core.data.shards import Shards, SliceDataset, crop_draws

__all__ = ["SliceBatches", "HostBatch", "HostBuffers", "crop_flip", "prefetch", "INT16_SCALE"]

#: int16 code of 1.0 for float arrays kept on the device (``resident``): value = code / INT16_SCALE
INT16_SCALE = 32767.0

#: which shard array each batch key is read from (``A``/``B``: the task's source and target)
_UINT8_KEYS = ("mask", "labels")


class HostBatch(dict):
    """A batch as read on the host: crop windows (``cropped``; already flipped when ``flipped``)
    or full-size slices (``A`` ``(n, C, h, w)``, the others ``(n, h, w)``), plus ``y``, ``x``,
    ``flip`` (per sample) and, in resident mode, ``ia``/``ib`` instead of the arrays."""


def crop_flip(src: Tensor, idx: Tensor, y: Tensor, x: Tensor, flip: Tensor,
              size: tuple[int, int], method: str = "auto") -> Tensor:
    """``src[idx]`` cropped at ``(y, x)`` to ``size`` and flipped left-right where ``flip``, in
    ``src``'s dtype. ``src``: ``(N, C, H, W)``; returns ``(len(idx), C, *size)``.

    ``method``: ``take`` (one gather kernel: the device path), ``slices`` (views + one copy per
    sample: cheaper on a CPU), ``auto`` (``take`` on accelerators).

    >>> s = torch.arange(32.).view(2, 1, 4, 4)
    >>> one = lambda m: crop_flip(s, torch.tensor([1]), torch.tensor([1]), torch.tensor([0]),
    ...                           torch.tensor([True]), (2, 3), m)
    >>> one("take").flatten().tolist() == one("slices").flatten().tolist() == [22., 21., 20., 26., 25., 24.]
    True
    """
    n, c, h, w = src.shape
    sh, sw = size
    if method == "auto":
        method = "slices" if src.device.type == "cpu" else "take"
    if method == "slices":
        yl, xl, fl, il = y.tolist(), x.tolist(), flip.tolist(), idx.tolist()
        parts = []
        for i, yy, xx, ff in zip(il, yl, xl, fl):
            v = src[i, :, yy:yy + sh, xx:xx + sw]
            parts.append(v.flip(-1) if ff else v)
        if not parts:
            return src.new_empty((0, c, sh, sw))
        return torch.stack(parts)
    if method != "take":
        raise ValueError(f"crop_flip: method expected auto | take | slices, got {method!r}")
    dev = src.device
    ar_h, ar_w = torch.arange(sh, device=dev), torch.arange(sw, device=dev)
    cols = torch.where(flip[:, None], x[:, None] + (sw - 1) - ar_w, x[:, None] + ar_w)
    pix = (y[:, None] + ar_h)[:, :, None] * w + cols[:, None, :]                      # (B, sh, sw)
    base = idx[:, None] * (c * h * w) + torch.arange(c, device=dev)[None, :] * (h * w)  # (B, C)
    return torch.take(src, base[:, :, None, None] + pix[:, None])


_NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float16: np.dtype(np.float16),
              torch.int16: np.dtype(np.int16), torch.uint8: np.dtype(np.uint8),
              torch.int64: np.dtype(np.int64), torch.float64: np.dtype(np.float64)}


class HostBuffers:
    """The host buffers of one ring slot, reused batch after batch.

    ``pin=True`` (CUDA): pinned tensors; the batch is copied to the device, and :func:`prefetch`
    refills a slot only after that copy finished. ``pin=False`` (CPU device): the buffers are
    the batch itself, so a buffer is reused only when no tensor made from it is alive any more
    (the numpy array's reference count: one from this slot, one from each live torch storage of
    it); a batch that its consumer still holds gets a fresh buffer instead of being overwritten.
    """

    def __init__(self, pin: bool = False) -> None:
        self.pin = pin
        self._bufs: dict[str, np.ndarray | Tensor] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A ``shape``/``dtype`` tensor for ``key``: the slot's own when free, else a new one."""
        buf = self._bufs.get(key)
        if self.pin:
            if not isinstance(buf, Tensor) or buf.shape != shape or buf.dtype != dtype:
                buf = self._bufs[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
            return buf
        np_dtype = _NP_DTYPES[dtype]
        # 3 references = this dict's, ``buf``'s and getrefcount's argument: no tensor of it is alive
        if (not isinstance(buf, np.ndarray) or buf.shape != shape or buf.dtype != np_dtype
                or sys.getrefcount(buf) > 3):
            buf = self._bufs[key] = np.empty(shape, np_dtype)
        return torch.from_numpy(buf)


def _flat_tensor(a: np.ndarray) -> Tensor:
    """A 1D torch view of a shard array (a read-only memory map) without copying it: mapped
    again copy-on-write (``mode="c"``: torch wants a writable array; nothing is ever written)."""
    if isinstance(a, np.memmap) and a.filename is not None and a.flags.c_contiguous:
        a = np.memmap(a.filename, dtype=a.dtype, mode="c", offset=a.offset, shape=a.shape)
    elif not a.flags.writeable:
        a = np.array(a)
    return torch.from_numpy(np.ascontiguousarray(a).reshape(-1))


class SliceBatches:
    """2D training batches of one shard split (see the module doc).

    ``keys``: the batch entries the framework uses (``GANFramework.batch_keys()``; ``A`` and
    ``B`` always). Other arguments as :class:`~gan_core.data.shards.SliceDataset`, plus
    ``device``, ``resident``, ``crop_on_host`` (default True: copy crop windows, not whole
    slices) and ``flip_on_host`` (default: when the device is the CPU).
    """

    def __init__(self, shards: Shards, *, image_size: int | None, flip: bool, seed: int, task,
                 min_body_fraction: float = 0.0, keys: Iterable[str] = ("A", "B"),
                 device: torch.device | str = "cpu", resident: bool = False,
                 crop_on_host: bool | None = None, flip_on_host: bool | None = None) -> None:
        self.ds = SliceDataset(shards, image_size=image_size, flip=flip,
                               min_body_fraction=min_body_fraction, seed=seed, task=task)
        self.ds._check_size()
        self.shards, self.task, self.inputs = self.ds.shards, self.ds.task, self.ds.inputs
        self.seed, self.flip = seed, flip
        self.device = torch.device(device)
        self.hw = tuple(self.shards.index["inplane"])
        self.size = (image_size, image_size) if image_size is not None else self.hw
        arr = self.shards.arrays
        self.keys = ["A", "B"] + [k for k in _UINT8_KEYS if k in set(keys) and k in arr]
        missing = [k for k in keys if k not in ("A", "B", *_UINT8_KEYS) or (k in _UINT8_KEYS and k not in arr)]
        if missing:
            raise ValueError(f"SliceBatches: {self.shards.dir} cannot provide batch keys {missing} "
                             f"(has arrays {sorted(arr)}; batch keys are A, B, mask, labels; labels "
                             "are packed only when every subject has a labels.nii.gz, and loss.shape "
                             "> 0 needs them)")
        self.channels = int(self.task.in_channels)
        self.identity = self.inputs.identity
        self.resident: dict[str, Tensor] | None = None
        if resident:
            self._make_resident()
        #: copy only the crop windows off the memory map (default); False: whole slices, cropped
        #: on the device (the reference path)
        self.crop_on_host = (True if crop_on_host is None else crop_on_host) and self.resident is None
        #: flip in that same host copy: what a CPU "device" wants (default there); accelerators
        #: flip on the device, where it is nearly free
        self.flip_on_host = self.crop_on_host and (self.device.type == "cpu" if flip_on_host is None
                                                   else flip_on_host)
        #: 1D torch views of the arrays read (source/target/mask/labels), for crop-window views
        self._flat: dict[str, Tensor] = {}
        if self.crop_on_host:
            names = {self.task.target} | {k for k in self.keys[2:]}
            if self.identity and self.channels:
                names.add(self.task.source)
            self._flat = {k: _flat_tensor(arr[k]) for k in names}

    def __len__(self) -> int:
        return len(self.ds)

    # -- host side -----------------------------------------------------------------------------
    def empty_slot(self, n: int | None = None) -> HostBuffers:
        """Host buffers of one ring slot (pinned when the device is CUDA), reused batch after
        batch; allocated on first use (``n`` is accepted for callers that size them)."""
        return HostBuffers(pin=self.device.type == "cuda")

    def _shapes(self, n: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        h, w = self.size if self.crop_on_host else self.hw
        arr = self.shards.arrays
        a_dtype = (_torch_dtype(arr[self.task.source].dtype) if self.identity and self.channels == 1
                   else torch.float32)
        out = {"A": ((n, self.channels, h, w), a_dtype),
               "B": ((n, h, w), _torch_dtype(arr[self.task.target].dtype))}
        for k in self.keys[2:]:
            out[k] = ((n, h, w), _torch_dtype(arr[k].dtype))
        return out

    def read(self, keys: np.ndarray, slot: HostBuffers | None = None) -> HostBatch:
        """Read the samples of ``keys`` (``(n, 3)`` int: epoch, a, b) on the host into ``slot``
        (default: fresh buffers). Resident mode reads nothing: it returns the indices only."""
        keys = np.asarray(keys, np.int64).reshape(-1, 3)
        n = len(keys)
        ia = self.ds.slices[keys[:, 1]]
        ib = self.ds.slices[keys[:, 2]]
        y, x, fl = crop_draws(self.seed, keys, self.hw, self.size[0] if self.size != self.hw else None)
        fl &= self.flip
        hb = HostBatch(y=torch.from_numpy(y), x=torch.from_numpy(x), flip=torch.from_numpy(fl))
        if self.resident is not None:
            hb.update(ia=torch.from_numpy(ia), ib=torch.from_numpy(ib))
            return hb
        slot = slot if slot is not None else self.empty_slot(n)
        bufs = {k: slot.get(k, *shape_dtype) for k, shape_dtype in self._shapes(n).items()}
        if self.crop_on_host:
            self._read_cropped(keys, ia, ib, y, x, fl if self.flip_on_host else None, bufs)
            hb.update(bufs, cropped=True, flipped=self.flip_on_host)
            return hb
        arr = self.shards.arrays
        if self.channels == 0:
            pass
        elif self.identity:
            np.take(arr[self.task.source], ia, axis=0, out=bufs["A"].numpy()[:, 0], mode="clip")
        else:
            rngs = (np.random.default_rng([self.seed, *k]) if self.task.per_sample else None
                    for k in keys.tolist())
            a_np = bufs["A"].numpy()
            for j, (i, rng) in enumerate(zip(ia.tolist(), rngs)):
                a_np[j] = self.inputs.slices(i, i + 1, rng)[:, 0]
        np.take(arr[self.task.target], ib, axis=0, out=bufs["B"].numpy(), mode="clip")
        for k in self.keys[2:]:
            np.take(arr[k], ia, axis=0, out=bufs[k].numpy(), mode="clip")
        hb.update(bufs)
        return hb

    def _read_cropped(self, keys: np.ndarray, ia: np.ndarray, ib: np.ndarray, y: np.ndarray,
                      x: np.ndarray, fl: np.ndarray | None, bufs: dict[str, Tensor]) -> None:
        """Host crop: each sample's crop window copied off the memory map into ``bufs`` (one
        strided view and one torch copy per sample and array; flipped in the copy where ``fl``)."""
        sh, sw = self.size
        h, w = self.hw
        win = y * w + x                                     # the window's offset in its slice
        # (destinations per sample, flat source, first element of each window)
        jobs = [(bufs[k].unbind(0), self._flat[self.task.target if k == "B" else k],
                 (ib if k == "B" else ia) * (h * w) + win)
                for k in self.keys if k != "A"]
        if self.identity and self.channels:
            jobs.append((bufs["A"][:, 0].unbind(0), self._flat[self.task.source], ia * (h * w) + win))
        flips = fl.tolist() if fl is not None else [False] * len(keys)
        # a flipped window: flipped into a fresh tensor (the allocator hands back the same
        # cache-warm block each time), then copied; 1.5x a plain copy, where ``aten::flip.out``
        # and numpy's negative-stride copy measured 1.7x and 3x
        for dsts, src, starts in jobs:
            for dst, start, ff in zip(dsts, starts.tolist(), flips):
                v = src.as_strided((sh, sw), (w, 1), start)
                dst.copy_(v.flip(-1) if ff else v)
        if self.identity or not self.channels:
            return
        rngs = ([np.random.default_rng([self.seed, *k]) for k in keys.tolist()]
                if self.task.per_sample else [None] * len(keys))
        a_dst = bufs["A"].unbind(0)
        for j, (i_a, yy, xx, ff) in enumerate(zip(ia.tolist(), y.tolist(), x.tolist(), flips)):
            a = torch.from_numpy(self.inputs.slices(i_a, i_a + 1, rngs[j])[:, 0])[:, yy:yy + sh, xx:xx + sw]
            a_dst[j].copy_(a.flip(-1) if ff else a)

    # -- device side ---------------------------------------------------------------------------
    def finish(self, hb: HostBatch, method: str = "auto") -> dict[str, Tensor]:
        """Move a host batch to the device, crop, flip and convert it: ``A`` ``(n, C, s, s)`` and
        ``B`` float32, ``mask`` float32, ``labels`` int64 (as ``SliceDataset`` samples stacked)."""
        dev = self.device
        y, x, fl = (hb[k].to(dev, non_blocking=True) for k in ("y", "x", "flip"))
        n = len(hb["y"])
        out: dict[str, Tensor] = {}
        flip_here = hb.get("cropped") and not hb.get("flipped") and bool(hb["flip"].any())
        for k in self.keys:
            if k == "A" and self.channels == 0:
                out["A"] = torch.zeros((n, 0, *self.size), device=dev)
                continue
            if hb.get("cropped"):
                v = hb[k].to(dev, non_blocking=True)
                v = v.unsqueeze(1) if v.dim() == 3 else v
                if flip_here:  # crop windows read unflipped: flip where drawn, on the device
                    v = torch.where(fl.view(-1, 1, 1, 1), v.flip(-1), v)
            else:
                if self.resident is not None:
                    src = self.resident[k]
                    idx = hb["ib" if k == "B" else "ia"].to(dev, non_blocking=True)
                else:
                    src = hb[k].to(dev, non_blocking=True)
                    idx = torch.arange(n, device=dev)
                if src.dim() == 3:
                    src = src.unsqueeze(1)
                v = crop_flip(src, idx, y, x, fl, self.size, method)
            if k == "labels":
                v = v.long()
            elif v.dtype == torch.int16:  # resident codes
                v = v.float().div_(INT16_SCALE)
            else:
                v = v.float()  # float32 stays as it is: on a CPU device, the host buffer itself
            out[k] = v
        return out

    def __call__(self, keys: np.ndarray) -> dict[str, Tensor]:
        """The device batch of ``keys`` (read into fresh host buffers; training uses :func:`prefetch`)."""
        return self.finish(self.read(keys))

    # -- resident mode -------------------------------------------------------------------------
    def _make_resident(self, chunk: int = 256) -> None:
        if self.task.per_sample:
            raise ValueError(f"data.device_resident: task {self.task.name!r} draws its input per "
                             "sample (per_sample); train it with data.device_resident: false")
        arr = self.shards.arrays
        n = self.shards.index["n_slices"]
        h, w = self.hw
        dev = self.device
        res: dict[str, Tensor] = {}

        def quantise(a: np.ndarray, where: str) -> Tensor:
            m = float(np.abs(a).max()) if a.size else 0.0
            if m > 1.0 + 1e-6:
                raise ValueError(f"data.device_resident: {where} has values up to {m:.3g}; "
                                 "expected [-1, 1] (int16 codes)")
            return torch.from_numpy(np.rint(np.asarray(a, np.float32) * INT16_SCALE).astype(np.int16))

        for k in self.keys:
            if k == "A" and self.channels == 0:
                continue
            if k in _UINT8_KEYS:
                t = torch.empty((n, h, w), dtype=torch.uint8, device=dev)
                for z in range(0, n, chunk):
                    t[z:z + chunk] = torch.from_numpy(np.array(arr[k][z:z + chunk], np.uint8)).to(dev)
            elif k == "B" or self.identity:
                name = self.task.target if k == "B" else self.task.source
                t = torch.empty((n, h, w), dtype=torch.int16, device=dev)
                for z in range(0, n, chunk):
                    t[z:z + chunk] = quantise(arr[name][z:z + chunk], f"{self.shards.dir}/{name}.npy").to(dev)
            else:  # a fixed degradation: computed once per subject, kept as int16
                t = torch.empty((n, self.channels, h, w), dtype=torch.int16, device=dev)
                for i, sub in enumerate(self.shards.subjects):
                    img = np.moveaxis(self.inputs.subject_input(i), 0, 1)  # (Z, C, H, W)
                    t[sub["offset"]:sub["offset"] + sub["depth"]] = quantise(
                        img, f"task {self.task.name!r} input of subject {sub['id']}").to(dev)
            res[k] = t
        self.resident = res

    def resident_bytes(self) -> int:
        """Device memory held by resident mode (0 when streaming)."""
        return sum(t.numel() * t.element_size() for t in (self.resident or {}).values())


def _torch_dtype(np_dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, np_dtype)).dtype


def prefetch(batches: SliceBatches, key_batches: Iterator[np.ndarray], *, batch_size: int,
             workers: int = 0) -> Iterator[dict[str, Tensor]]:
    """Device batches for each ``(n, 3)`` key array of ``key_batches``, in order.

    ``workers`` threads read up to ``workers`` batches ahead, each into its own slot of a ring of
    ``workers + 2`` reused host buffers (pinned on CUDA); 0 reads each batch when it is asked for.
    A slot is refilled only after the batch read from it was handed out and the next one asked
    for, and (CUDA) after its copy to the device finished.
    """
    resident = batches.resident is not None
    n_slots = workers + 2
    slots: list[dict[str, Tensor] | None] = [None if resident else batches.empty_slot(batch_size)
                                             for _ in range(n_slots)]
    events: list[torch.cuda.Event | None] = [None] * n_slots
    cuda = batches.device.type == "cuda"

    def fill(i: int, keys: np.ndarray) -> HostBatch:
        ev = events[i]
        if ev is not None:
            ev.synchronize()
        return batches.read(keys, slots[i])

    def hand_out(i: int, hb: HostBatch) -> dict[str, Tensor]:
        out = batches.finish(hb)
        if cuda and not resident:
            ev = torch.cuda.Event()
            ev.record()
            events[i] = ev
        return out

    if workers <= 0:
        for t, keys in enumerate(key_batches):
            yield hand_out(t % n_slots, fill(t % n_slots, keys))
        return
    lock = threading.Lock()  # one reader of the key iterator at a time
    pool = ThreadPoolExecutor(workers, thread_name_prefix="medgan-batches")
    pending: deque = deque()
    t_next = 0

    def submit() -> bool:
        nonlocal t_next
        with lock:
            try:
                keys = next(key_batches)
            except StopIteration:
                return False
        i = t_next % n_slots
        pending.append((i, pool.submit(fill, i, keys)))
        t_next += 1
        return True

    try:
        for _ in range(workers):
            if not submit():
                break
        while pending:
            i, fut = pending.popleft()
            hb = fut.result()
            submit()  # slot (t + workers) % n_slots: not the one handed out last
            yield hand_out(i, hb)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stack_samples(samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack :class:`SliceDataset` samples into a batch (what a ``DataLoader`` would collate)."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
