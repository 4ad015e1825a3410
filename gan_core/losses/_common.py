"""Shape checks and small tensor helpers shared by the loss terms (private)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

def _spatial(x: Tensor, name: str = "pred") -> int:
    """Number of spatial dims of an (N, C, *spatial) tensor; 2 or 3, else ValueError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: expected shape (N, C, H, W) or (N, C, D, H, W), "
                         f"got {tuple(x.shape)}")
    return x.dim() - 2


def _pair(pred: Tensor, target: Tensor, tname: str = "target") -> int:
    nd = _spatial(pred, "pred")
    _spatial(target, tname)
    if pred.shape != target.shape:
        raise ValueError(f"pred and {tname} shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}")
    return nd


def _dist(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "l1":
        return F.l1_loss(a, b)
    if kind == "l2":
        return F.mse_loss(a, b)
    raise ValueError(f"kind: expected 'l1' or 'l2', got {kind!r}")


def _check_kind(kind: str) -> str:
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind: expected 'l1' or 'l2', got {kind!r}")
    return kind


def _box_mean(x: Tensor, window: int) -> Tensor:
    """Local mean over a ``window``^d box (stride 1, same size, borders average what exists)."""
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    return pool(x, window, stride=1, padding=window // 2, count_include_pad=False)
