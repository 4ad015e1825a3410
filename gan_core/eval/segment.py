"""A small 2D tissue segmenter and Dice scores: the downstream task that judges synthetic images.

:class:`SegUNet` is a compact U-Net (two 3x3 conv + GroupNorm + ReLU per level, max-pool down,
transposed-conv up, skip connections by concatenation). Input ``(N, 1, H, W)`` in [-1, 1],
output logits ``(N, n_classes, H, W)``; any ``H, W`` (padded by edge replication to a multiple of
``2 ** (levels - 1)`` inside ``forward`` and cropped back). GroupNorm, not BatchNorm, so training
and evaluation compute the same function and tiny batches are fine.

:func:`train_segmenter` fits it with cross-entropy + soft Dice, Adam, random left-right flips;
the same seed gives the same network (on CPU; CUDA convolutions may be non-deterministic).

Dice: :func:`dice_per_class` is ``2|P∩T| / (|P| + |T|)`` per label value, NaN for a class absent
from both prediction and truth. :func:`mean_dice` averages the non-NaN classes, excluding the
background (label 0) unless ``include_background=True``; a class predicted but absent from the
truth counts as 0 (a false positive is penalised, not ignored).

>>> import numpy as np
>>> truth = np.array([[0, 1], [2, 2]])
>>> dice_per_class(truth, truth, 4).tolist()
[1.0, 1.0, 1.0, nan]
>>> mean_dice(np.array([[0, 1], [1, 2]]), truth, 4)  # class 1: 2*1/3, class 2: 2*1/3
0.6666666666666666
>>> # images, labels, subj = load_slices("shards/train", modality="ct", min_body_fraction=0.05)
>>> # model = train_segmenter(images, labels, n_classes=10, steps=2000)
>>> # mean_dice(predict(model, test_images), test_labels, 10)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "SegUNet",
    "train_segmenter",
    "predict",
    "dice_per_class",
    "mean_dice",
    "class_mean",
    "load_slices",
    "save_segmenter",
    "load_segmenter",
    "segmenter_extra",
    "soft_dice_loss",
]

ArrayLike = np.ndarray | Tensor


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(4, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.ReLU(True),
    )


class SegUNet(nn.Module):
    """Compact 2D U-Net segmenter: ``(N, in_channels, H, W)`` -> logits ``(N, n_classes, H, W)``.

    ``widths``: channels per level (``len(widths)`` levels, the last one is the bottleneck).

    >>> net = SegUNet(n_classes=3, widths=(4, 8))
    >>> net(torch.zeros(2, 1, 10, 7)).shape
    torch.Size([2, 3, 10, 7])
    >>> net.encode(torch.zeros(2, 1, 10, 7))[-1].shape  # bottleneck of the padded 10x8 input
    torch.Size([2, 8, 5, 4])
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if in_channels < 1:
            raise ValueError(f"in_channels: expected >= 1, got {in_channels}")
        if n_classes < 2:
            raise ValueError(f"n_classes: expected >= 2, got {n_classes}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths: expected one or more positive channel counts, got {widths}")
        self.in_channels, self.n_classes, self.widths = int(in_channels), int(n_classes), widths
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_block(c, w))
            c = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_skip, w_deep in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.up.append(nn.ConvTranspose2d(w_deep, w_skip, 2, stride=2))
            self.merge.append(_block(2 * w_skip, w_skip))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    @property
    def multiple(self) -> int:
        """Spatial sizes are padded to a multiple of this inside :meth:`forward`."""
        return 2 ** (len(self.widths) - 1)

    def pad(self, x: Tensor) -> Tensor:
        """Edge-replicate ``x`` at the bottom/right to a multiple of :attr:`multiple`."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SegUNet: expected input (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        m = self.multiple
        ph, pw = (-x.shape[2]) % m, (-x.shape[3]) % m
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder feature maps per level (the last is the bottleneck) of the padded input."""
        feats = []
        x = self.pad(x)
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        feats = self.encode(x)
        y = feats[-1]
        for up, merge, skip in zip(self.up, self.merge, reversed(feats[:-1])):
            y = merge(torch.cat([skip, up(y)], 1))
        return self.head(y)[..., :h, :w]

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "n_classes": self.n_classes,
                "widths": list(self.widths)}


# -- data --------------------------------------------------------------------------------------

def load_slices(shard_dir: str | os.PathLike, modality: str = "ct", min_body_fraction: float = 0.0,
                subjects: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices of one modality with their tissue labels from a shard directory.

    Returns ``images (N, 1, H, W)`` float32 in [-1, 1], ``labels (N, H, W)`` int64 and
    ``subject_index (N,)`` (position in ``Shards(shard_dir).subjects``). ``subjects`` restricts to
    those subject positions (in the order given); ``min_body_fraction`` drops slices whose body
    mask covers less of the slice than that.
    """
    from gan_core.data.shards import Shards

    sh = Shards(shard_dir)
    arr = sh.arrays
    if "labels" not in arr:
        raise ValueError(f"{sh.dir}: the shards have no tissue labels (labels.npy); pack a cohort "
                         "in which every subject has a labels.nii.gz")
    if modality not in arr or modality in ("mask", "labels"):
        raise ValueError(f"modality: expected one of {sorted(k for k in arr if k not in ('mask', 'labels'))}"
                         f" in {sh.dir}, got {modality!r}")
    if not 0.0 <= min_body_fraction <= 1.0:
        raise ValueError(f"min_body_fraction: expected a value in [0, 1], got {min_body_fraction}")
    order = range(len(sh.subjects)) if subjects is None else list(subjects)
    imgs, labs, idx = [], [], []
    for i in order:
        if not 0 <= int(i) < len(sh.subjects):
            raise ValueError(f"subjects: index {i} out of range for {len(sh.subjects)} subjects in {sh.dir}")
        s = sh.subjects[int(i)]
        sl = slice(s["offset"], s["offset"] + s["depth"])
        frac = np.asarray(arr["mask"][sl]).reshape(s["depth"], -1).astype(bool).mean(1)
        keep = np.flatnonzero(frac >= min_body_fraction) + s["offset"]
        imgs.append(np.asarray(arr[modality][keep], np.float32))
        labs.append(np.asarray(arr["labels"][keep], np.int64))
        idx.append(np.full(keep.size, int(i), np.int64))
    h, w = sh.index["inplane"]
    images = np.concatenate(imgs)[:, None] if imgs else np.zeros((0, 1, h, w), np.float32)
    labels = np.concatenate(labs) if labs else np.zeros((0, h, w), np.int64)
    subject_index = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    return images, labels, subject_index


def _as_images(images: ArrayLike, name: str = "images") -> Tensor:
    x = torch.as_tensor(np.asarray(images, np.float32) if isinstance(images, np.ndarray) else images)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected (N, C, H, W), got shape {tuple(x.shape)}")
    return x.float()


def _as_labels(labels: ArrayLike, n_classes: int, name: str = "labels") -> Tensor:
    y = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if y.dim() != 3:
        raise ValueError(f"{name}: expected (N, H, W) integer labels, got shape {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"{name}: expected integer label values")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{name}: values must be in 0..{n_classes - 1} (n_classes={n_classes}), "
                         f"got {int(y.min())}..{int(y.max())}")
    return y


# -- training ----------------------------------------------------------------------------------

def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """``1 - mean_c (2 Σ p t + eps) / (Σ p + Σ t + eps)`` over the batch, all classes."""
    p = logits.softmax(1)
    t = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    num = 2 * (p * t).sum(dims) + eps
    den = p.sum(dims) + t.sum(dims) + eps
    return 1 - (num / den).mean()


def train_segmenter(images: ArrayLike, labels: ArrayLike, *, n_classes: int, steps: int,
                    batch_size: int = 8, lr: float = 3e-3, seed: int = 0,
                    device: str | torch.device = "cpu", widths: Sequence[int] = (16, 32, 64),
                    flip: bool = True, dice_weight: float = 1.0) -> SegUNet:
    """Train a :class:`SegUNet` on ``images (N, 1, H, W)`` / ``labels (N, H, W)``.

    Loss: cross-entropy + ``dice_weight`` x soft Dice; Adam(lr, betas 0.9/0.999); ``steps``
    minibatches of ``batch_size`` slices drawn uniformly with replacement, each flipped
    left-right with probability 1/2 when ``flip``. Weights are initialised from ``seed`` without
    touching torch's global RNG. ``steps=0`` returns the (seeded) untrained network. Returns the
    network in eval mode on ``device``.
    """
    if steps < 0:
        raise ValueError(f"steps: expected >= 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    x_all = _as_images(images)
    y_all = _as_labels(labels, n_classes)
    if x_all.shape[0] != y_all.shape[0] or x_all.shape[2:] != y_all.shape[1:]:
        raise ValueError(f"images {tuple(x_all.shape)} and labels {tuple(y_all.shape)}: expected "
                         "the same number of slices and the same H, W")
    if x_all.shape[0] == 0 and steps > 0:
        raise ValueError("images: no training slices")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegUNet(x_all.shape[1], n_classes, widths)
    model.to(device)
    if steps == 0:
        return model.eval()
    rng = np.random.default_rng([seed, 0x5E6])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = x_all.shape[0]
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, n, size=batch_size))
        x, y = x_all[idx], y_all[idx]
        if flip:
            f = torch.from_numpy(rng.random(batch_size) < 0.5)
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
            y = torch.where(f[:, None, None], y.flip(-1), y)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if dice_weight:
            loss = loss + dice_weight * soft_dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: ArrayLike, batch_size: int = 64) -> np.ndarray:
    """Label map ``(N, H, W)`` int64 (argmax of the logits) of ``images (N, 1, H, W)``."""
    x = _as_images(images)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    if not out:
        return np.zeros((0, *x.shape[2:]), np.int64)
    return torch.cat(out).numpy().astype(np.int64)


# -- Dice --------------------------------------------------------------------------------------

def dice_per_class(pred: ArrayLike, truth: ArrayLike, n_classes: int) -> np.ndarray:
    """Dice ``2|P∩T| / (|P| + |T|)`` of each label value ``0..n_classes-1`` over all voxels.

    Any shapes (2D slice, 3D volume, a batch), equal for ``pred`` and ``truth``. NaN for a class
    absent from both; 0 for a class in only one of them.
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape}: expected the same shape")
    p, t = p.astype(np.int64).ravel(), t.astype(np.int64).ravel()
    for name, a in (("pred", p), ("truth", t)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name}: label values must be in 0..{n_classes - 1}, "
                             f"got {a.min()}..{a.max()}")
    inter = np.bincount(p[p == t], minlength=n_classes).astype(np.float64)
    total = (np.bincount(p, minlength=n_classes) + np.bincount(t, minlength=n_classes)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / np.where(total > 0, total, 1), np.nan)


def class_mean(per_class: np.ndarray, include_background: bool = False) -> float:
    """Mean of the non-NaN entries of a per-class Dice vector (skipping class 0 unless
    ``include_background``); NaN when none is present."""
    d = np.asarray(per_class, np.float64)
    d = d if include_background else d[1:]
    d = d[~np.isnan(d)]
    return float(d.mean()) if d.size else float("nan")


def mean_dice(pred: ArrayLike, truth: ArrayLike, n_classes: int, *,
              include_background: bool = False) -> float:
    """Mean Dice over the classes present in prediction or truth, background (0) excluded by
    default (it dominates the slice and would inflate the score); NaN when no class is present."""
    return class_mean(dice_per_class(pred, truth, n_classes), include_background)


# -- weights -----------------------------------------------------------------------------------

_FORMAT = "medgan-segunet"


def save_segmenter(model: SegUNet, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``{"format", "config", "state_dict", "extra"}`` (CPU tensors) to ``path``.

    ``extra``: plain numbers/strings/lists the caller wants kept with the weights (read back with
    :func:`segmenter_extra`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": _FORMAT, "config": model.config(), "extra": dict(extra or {}),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def segmenter_extra(path: str | os.PathLike) -> dict:
    """The ``extra`` dict :func:`save_segmenter` stored (empty for other files)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    return dict(obj.get("extra") or {}) if isinstance(obj, dict) and obj.get("format") == _FORMAT else {}


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                   in_channels: int | None = None, n_classes: int | None = None,
                   widths: Sequence[int] | None = None) -> SegUNet:
    """A :class:`SegUNet` from a local file written by :func:`save_segmenter`, or from a bare
    ``state_dict`` file when ``in_channels``/``n_classes``/``widths`` describe the network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter weights not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == _FORMAT:
        cfg, state = dict(obj["config"]), obj["state_dict"]
    elif isinstance(obj, dict) and n_classes is not None and widths is not None:
        cfg = {"in_channels": in_channels or 1, "n_classes": n_classes, "widths": list(widths)}
        state = obj
    else:
        raise ValueError(f"{path}: not a {_FORMAT} checkpoint; for a bare state_dict pass "
                         "n_classes= and widths= (and in_channels= if not 1)")
    model = SegUNet(cfg["in_channels"], cfg["n_classes"], cfg["widths"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit SegUNet{cfg}: {exc}") from exc
    return model.to(device).eval()
