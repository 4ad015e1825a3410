"""Feature terms of the survey's Table 5: L7 perceptual and L9 style-content, on the feature
maps of a local encoder (:class:`ConvEncoder`) or of a discriminator; nothing is downloaded.

>>> import torch
>>> enc = ConvEncoder(2, 1, (4,))
>>> float(PerceptualLoss(enc)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
0.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.losses._common import _check_kind, _dist, _pair

__all__ = ["FeatureExtractor", "ConvEncoder", "PerceptualLoss", "gram_matrix", "StyleContentLoss"]

FeatureExtractor = Union[nn.Module, Callable[[Tensor], Union[Tensor, Sequence[Tensor]]]]


# --------------------------------------------------------------------------- feature extractors
class ConvEncoder(nn.Module):
    """A small conv encoder returning the feature map after each stage (a list), 2D or 3D.

    Stage i: conv(k=3, stride 2 except the first) -> LeakyReLU(0.2). Useful as a local, trainable
    or pre-trained (``torch.save(enc.state_dict(), path)``) extractor for :class:`PerceptualLoss`.

    >>> [f.shape[1] for f in ConvEncoder(2, 1, (4, 8))(torch.zeros(1, 1, 8, 8))]
    [4, 8]
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        stages, c = [], in_channels
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(conv(c, w, 3, stride=1 if i == 0 else 2, padding=1),
                                        nn.LeakyReLU(0.2)))
            c = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class _FeatureLoss(nn.Module):
    """Shared handling of a feature extractor (module or callable returning feature maps)."""

    def __init__(self, extractor: FeatureExtractor, weights_path: str | os.PathLike | None,
                 freeze: bool) -> None:
        super().__init__()
        if not callable(extractor):
            raise TypeError(f"extractor: expected an nn.Module or a callable returning feature "
                            f"maps, got {type(extractor).__name__}")
        if weights_path is not None:
            if not isinstance(extractor, nn.Module):
                raise TypeError("weights_path given but extractor is not an nn.Module")
            path = os.fspath(weights_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"weights_path: no such file {path!r}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and "state_dict" in state:
                state = state["state_dict"]
            try:
                extractor.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"weights_path {path!r} does not fit the extractor: "
                                 f"{err}") from err
        self.frozen = bool(freeze and isinstance(extractor, nn.Module))
        if self.frozen:
            extractor.requires_grad_(False).eval()
            self.extractor = extractor                       # registered: moves with .to()
        else:                                                # e.g. the live discriminator:
            self.__dict__["extractor"] = extractor           # not registered, not frozen

    def train(self, mode: bool = True) -> "_FeatureLoss":
        super().train(mode)
        if self.frozen:
            self.extractor.eval()                            # a frozen extractor stays in eval
        return self

    def features(self, x: Tensor) -> list[Tensor]:
        out = self.extractor(x)
        feats = [out] if isinstance(out, Tensor) else list(out)
        if not feats or not all(isinstance(f, Tensor) for f in feats):
            raise TypeError("extractor must return a tensor or a non-empty list of tensors")
        return feats

    @staticmethod
    def _select(feats: list[Tensor], layers: Sequence[int] | None, what: str) -> list[Tensor]:
        if layers is None:
            return feats
        try:
            return [feats[i] for i in layers]
        except IndexError as err:
            raise IndexError(f"{what}: {list(layers)} out of range for {len(feats)} "
                             f"feature maps") from err


# --------------------------------------------------------------------------- L7 perceptual
class PerceptualLoss(_FeatureLoss):
    """L7 perceptual loss (Johnson et al. 2016): ``sum_i w_i mean|phi_i(p) - phi_i(t)|``.

    ``phi_i`` are the feature maps (selected by ``layers``, default all) that ``extractor`` returns:
    typically the discriminator's intermediate features (pass a callable; it is neither frozen nor
    registered, so the discriminator keeps training), or an ``nn.Module`` encoder, optionally loaded
    from the local file ``weights_path`` (a ``state_dict`` saved with ``torch.save``; no downloads),
    frozen and kept in eval mode when ``freeze``. ``layer_weights`` default ``1/len(layers)``.
    Target features are computed without gradient.

    >>> enc = ConvEncoder(2, 1, (4,))
    >>> float(PerceptualLoss(enc)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    0.0
    """

    def __init__(self, extractor: FeatureExtractor, layers: Sequence[int] | None = None,
                 weights_path: str | os.PathLike | None = None,
                 layer_weights: Sequence[float] | None = None, freeze: bool = True) -> None:
        super().__init__(extractor, weights_path, freeze)
        self.layers = None if layers is None else list(layers)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _pair(pred, target)
        fp = self._select(self.features(pred), self.layers, "layers")
        with torch.no_grad():
            ft = self._select(self.features(target.detach()), self.layers, "layers")
        ws = self.layer_weights or [1.0 / len(fp)] * len(fp)
        if len(ws) != len(fp):
            raise ValueError(f"layer_weights: {len(ws)} weights for {len(fp)} feature maps")
        return sum(w * F.l1_loss(a, b) for w, a, b in zip(ws, fp, ft))


# --------------------------------------------------------------------------- L9 style-content
def gram_matrix(feat: Tensor) -> Tensor:
    """Gram matrix ``G = F F^T / (C M)`` of a (N, C, *spatial) feature map with M positions.

    >>> gram_matrix(torch.ones(1, 2, 2, 2)).shape
    torch.Size([1, 2, 2])
    """
    n, c = feat.shape[:2]
    f = feat.reshape(n, c, -1)
    return f @ f.transpose(1, 2) / (c * f.shape[2])


class StyleContentLoss(_FeatureLoss):
    """L9 style-content loss (Gatys et al. 2016; Johnson et al. 2016)::

        style   = sum_{i in style_layers}   dist(G(phi_i(p)), G(phi_i(t)))   # Gram, see gram_matrix
        content = sum_{i in content_layers} mean|phi_i(p) - phi_i(t)|
        loss    = style_weight * style + content_weight * content

    ``dist`` is L1 (``kind="l1"``) or mean squared error (``"l2"``). Defaults: style on every
    feature map, content on the last. Extractor interface as :class:`PerceptualLoss`.

    >>> enc = ConvEncoder(2, 1, (4, 8))
    >>> float(StyleContentLoss(enc)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    0.0
    """

    def __init__(self, extractor: FeatureExtractor, style_layers: Sequence[int] | None = None,
                 content_layers: Sequence[int] | None = (-1,), style_weight: float = 1.0,
                 content_weight: float = 1.0, kind: str = "l1",
                 weights_path: str | os.PathLike | None = None, freeze: bool = True) -> None:
        super().__init__(extractor, weights_path, freeze)
        self.kind = _check_kind(kind)
        self.style_layers = None if style_layers is None else list(style_layers)
        self.content_layers = None if content_layers is None else list(content_layers)
        self.style_weight, self.content_weight = float(style_weight), float(content_weight)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _pair(pred, target)
        fp = self.features(pred)
        with torch.no_grad():
            ft = self.features(target.detach())
        sp = self._select(fp, self.style_layers, "style_layers")
        st = self._select(ft, self.style_layers, "style_layers")
        style = sum(_dist(gram_matrix(a), gram_matrix(b), self.kind) for a, b in zip(sp, st))
        cp = self._select(fp, self.content_layers, "content_layers")
        ct = self._select(ft, self.content_layers, "content_layers")
        content = sum(F.l1_loss(a, b) for a, b in zip(cp, ct))
        return self.style_weight * style + self.content_weight * content
