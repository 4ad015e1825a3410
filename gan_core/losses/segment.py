"""L6 shape consistency through a target-domain segmentor (Zhang et al., CVPR 2018), unpaired.

Zhang et al. train a segmentor ``S_B`` of the TARGET domain on that domain's own images and labels,
and ask it to recover the SOURCE's labels from the translation:
``L = CE(S_B(G(a)), labels_a)``. Here ``S_B`` is the cheapest honest segmentor of CT: a fixed,
differentiable per-voxel Gaussian class-conditional classifier ``p(tissue | value)`` with one
mean, sd and prior per tissue (:class:`TissueStats`), estimated from the CT domain's own training
CTs and labels only (``gan_core.data.unpaired`` writes them at pack time; no MR/CT pair is used).
Unlike the contrast-invariant terms of :mod:`gan_core.losses.consistency` it sees a tissue swap:
fat synthesised at +700 HU is classified as bone, and where the source label says bone (dark on T1,
like air) the translation must be bone-bright.

>>> import torch
>>> stats = TissueStats(labels=(0, 1), mean=(-1.0, 0.5), sd=(0.05, 0.05), prior=(0.5, 0.5))
>>> lab = torch.zeros(1, 1, 4, 4, dtype=torch.long); lab[..., 2:] = 1
>>> right = torch.where(lab.bool(), 0.5, -1.0).float()
>>> loss = SegmentConsistencyLoss(stats)
>>> float(loss(right, lab)) < 1e-3, float(loss(right.flip(-1), lab)) > 100
(True, True)

The classifier's loss is flat inside each tissue's interval of values (a white-matter voxel at
grey matter's side of the interval, or bone at +3000 HU, costs almost nothing). Its generative
counterpart :class:`TissueValueLoss` asks for the value itself: the L1 distance of each voxel of
the translation to the target domain's mean of its source tissue, i.e. the negative
log-likelihood under a Laplace distribution of the target tissue's values, up to scale.

>>> [round(float(TissueValueLoss(stats)(right + d, lab)), 4) for d in (0.0, 0.1)]
[0.0, 0.1]
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.losses._common import _spatial

__all__ = ["TissueStats", "SegmentConsistencyLoss", "TissueValueLoss"]


@dataclass(frozen=True)
class TissueStats:
    """One Gaussian per tissue of the target domain, in the network's output units ([-1, 1]).

    ``labels``: the label-map values; ``mean`` / ``sd``: each tissue's value mean and standard
    deviation; ``prior``: its voxel fraction (normalised here). ``mean_hu`` / ``sd_hu`` are
    informative only (the same in HU).
    """

    labels: tuple[int, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    prior: tuple[float, ...]
    mean_hu: tuple[float, ...] = ()
    sd_hu: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name in ("mean", "sd", "prior"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"tissue stats: {name} has {len(getattr(self, name))} values for "
                                 f"{n} labels")
        if n < 2:
            raise ValueError(f"tissue stats: need at least 2 tissues, got {n}")
        if len(set(self.labels)) != n or min(self.labels) < 0:
            raise ValueError(f"tissue stats: labels must be distinct and >= 0, got {self.labels}")
        bad = [v for v in (*self.mean, *self.sd, *self.prior) if not math.isfinite(v)]
        if bad or min(self.sd) <= 0 or min(self.prior) <= 0:
            raise ValueError("tissue stats: expected finite means, sd > 0 and prior > 0")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "TissueStats":
        """From a mapping with (at least) ``labels``, ``mean``, ``sd``, ``prior`` lists."""
        missing = [k for k in ("labels", "mean", "sd", "prior") if k not in data]
        if missing:
            raise ValueError(f"tissue stats: missing {missing}; expected keys labels, mean, sd, "
                             "prior (as written by gan_core.data.unpaired)")
        return cls(labels=tuple(int(v) for v in data["labels"]),
                   **{k: tuple(float(v) for v in data.get(k, ()))
                      for k in ("mean", "sd", "prior", "mean_hu", "sd_hu")})

    @classmethod
    def parse(cls, text: str) -> "TissueStats":
        """From JSON text (``ct_tissue_stats.json``), or the same as a Python literal (what a
        YAML-parsed ``--set`` of that JSON becomes once stored as a string)."""
        try:
            data = json.loads(text)
        except ValueError:
            try:
                data = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"tissue stats: expected JSON text, got {text[:80]!r}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"tissue stats: expected a JSON object, got {type(data).__name__}")
        return cls.from_mapping(data)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def of(cls, stats: "TissueStats | str | Mapping[str, Any]") -> "TissueStats":
        """``stats`` itself, or parsed from JSON text (:meth:`parse`) or a mapping
        (:meth:`from_mapping`)."""
        if isinstance(stats, TissueStats):
            return stats
        return cls.parse(stats) if isinstance(stats, str) else cls.from_mapping(stats)


class SegmentConsistencyLoss(nn.Module):
    """``CE(S(generated), labels)``, averaged over voxels whose label the stats know (others are
    ignored): ``S`` the Gaussian classifier of :class:`TissueStats` (logits
    ``log prior_k - log sd_k - (x - mean_k)^2 / (2 sd_k^2)``), each sd floored at ``min_sd``
    (output units) so partial-volume edges and noise cannot make it needle-sharp. Differentiable in
    ``generated``; the labels are the SOURCE image's (integer map ``(N, *sp)`` or ``(N, 1, *sp)``).
    The minimum is the Bayes error of the tissues' overlap (grey/white matter and CSF overlap on
    CT), not 0.

    ``shared_sd`` (default): one pooled sd (prior-weighted) for every tissue, a linear
    discriminant. Each tissue then owns an interval of values and the gradient of a voxel moves it
    monotonically towards its own tissue. With per-tissue sds (``shared_sd=False``) the widest
    tissue (cortical bone, ~160 HU) wins every value far from the narrow ones, so a bone voxel at
    -500 HU would cost nothing and one at fat's value is pushed away from bone.
    """

    def __init__(self, stats: TissueStats | str | Mapping[str, Any], min_sd: float = 0.01,
                 shared_sd: bool = True) -> None:
        super().__init__()
        self.stats = stats = TissueStats.of(stats)
        self.register_buffer("lut", _tissue_lut(stats), persistent=False)
        sd = torch.tensor(stats.sd, dtype=torch.float32)
        prior = torch.tensor(stats.prior, dtype=torch.float32)
        if shared_sd:
            sd = ((prior * sd ** 2).sum() / prior.sum()).sqrt().expand_as(sd).clone()
        sd = sd.clamp_min(float(min_sd))
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("sd", sd, persistent=False)
        self.register_buffer("bias", torch.log(prior / prior.sum()) - torch.log(sd), persistent=False)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(N, K, *sp)`` of a one-channel image ``(N, 1, *sp)``."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        z = (x.float() - self.mean.view(shape)) / self.sd.view(shape)
        return self.bias.view(shape) - 0.5 * z * z

    def forward(self, generated: Tensor, labels: Tensor) -> Tensor:
        target = _tissue_index(self.lut, generated, labels)
        target = target.masked_fill(target < 0, -100)
        if not (target >= 0).any():
            return generated.sum() * 0.0
        return F.cross_entropy(self.logits(generated), target, ignore_index=-100)


def _tissue_lut(stats: TissueStats) -> Tensor:
    """Label value -> index into ``stats`` (-1 for a label the stats do not know)."""
    lut = torch.full((max(stats.labels) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(stats.labels)] = torch.arange(len(stats.labels))
    return lut


def _tissue_index(lut: Tensor, generated: Tensor, labels: Tensor) -> Tensor:
    """Checked label map ``(N, *sp)`` as indices through ``lut`` (:func:`_tissue_lut`; -1 where
    the label is unknown)."""
    _spatial(generated, "generated")
    if generated.shape[1] != 1:
        raise ValueError(f"generated: expected one channel, got {generated.shape[1]}")
    if not isinstance(labels, Tensor) or labels.is_floating_point():
        raise TypeError("labels: expected an integer (long) tensor of class indices")
    if labels.dim() == generated.dim():
        labels = labels[:, 0]
    if labels.shape != (generated.shape[0], *generated.shape[2:]):
        raise ValueError(f"labels: expected shape {(generated.shape[0], *generated.shape[2:])}"
                         f" (or with a channel of 1), got {tuple(labels.shape)}")
    lut = lut.to(labels.device)  # a no-op for a module buffer moved with the module
    lab = labels.long()
    return torch.where((lab >= 0) & (lab < len(lut)), lut[lab.clamp(0, len(lut) - 1)], -1)


class TissueValueLoss(nn.Module):
    """``mean |G(x) - mean_{l(x)}|`` over the voxels whose source label ``l`` the stats know: each
    voxel of the translation at the TARGET domain's mean value of its SOURCE tissue (output
    units). The generative form of :class:`SegmentConsistencyLoss` (same :class:`TissueStats`,
    same source labels, no pair): where the classifier only asks a voxel to fall in its tissue's
    interval, this asks for the tissue's value, the minimiser of the expected absolute error when
    the target's values are the tissue means plus noise. Zero when every known voxel is at its
    tissue's mean; ``generated.sum() * 0`` when no voxel is known.
    """

    def __init__(self, stats: TissueStats | str | Mapping[str, Any]) -> None:
        super().__init__()
        self.stats = stats = TissueStats.of(stats)
        self.register_buffer("lut", _tissue_lut(stats), persistent=False)
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32), persistent=False)

    def forward(self, generated: Tensor, labels: Tensor) -> Tensor:
        idx = _tissue_index(self.lut, generated, labels)
        known = idx >= 0
        if not known.any():
            return generated.sum() * 0.0
        value = self.mean.to(generated.device)[idx.clamp_min(0)]
        return (generated[:, 0].float() - value).abs()[known].mean()
