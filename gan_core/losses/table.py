"""The one table of the survey's Table 5 loss terms, keyed like ``gan_core.config.LossWeights``.

Each :class:`LossTerm` says which Table-5 row it is, what it compares (its ``kind``), how to build
it (``factory``), whether the frameworks' own objective applies it (``optional=False``: gan,
image, cycle) or :class:`~gan_core.frameworks.base.GeneratorTerms` adds it when its weight is
> 0, and the Ray Tune range searched when the term is named without one
(``--space loss.structure``).

Kinds: ``adversarial`` (a discriminator's output), ``pair`` (a generated image and its target),
``cycle`` (a reconstruction and the real image), ``label`` (plus the tissue label map),
``feature`` (plus a feature extractor), ``source`` (a generated image and its own input),
``source_label`` (a generated image and its input's tissue label map).

The ``mind``, ``gradient_consistency`` and ``shape_consistency`` terms are the unpaired
(source-referenced) forms of rows L4, L6 and L8 (:mod:`gan_core.losses.consistency`):
cross-modality, they constrain structure, not intensity. ``segment_consistency`` is Zhang et al.'s
L6 shape consistency (:mod:`gan_core.losses.segment`): a target-domain segmentor must recover the
source's labels from the translation, so it constrains intensity too; ``tissue_value`` is its
generative form, each voxel at the target domain's mean value of its source tissue (both
factories take the target domain's :class:`~gan_core.losses.segment.TissueStats`:
``needs_stats``).

>>> TERMS["structure"].row, TERMS["structure"].kind, TERMS["structure"].search
('L8', 'pair', ('uniform', 0.0, 20.0))
>>> sorted(optional_terms("feature"))
['perceptual', 'style']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gan_core.losses.adversarial import GANLoss
from gan_core.losses.consistency import GradientConsistencyLoss, MINDLoss, ShapeConsistencyLoss
from gan_core.losses.features import PerceptualLoss, StyleContentLoss
from gan_core.losses.frequency import FrequencyLoss
from gan_core.losses.segment import SegmentConsistencyLoss, TissueValueLoss
from gan_core.losses.image import (CycleLoss, GradientLoss, ImageLoss, RegulationLoss,
                                   SelfRegLoss, SharpnessLoss)
from gan_core.losses.shape import ShapeLoss
from gan_core.losses.structure import StructureLoss

__all__ = ["KINDS", "LossTerm", "TERMS", "optional_terms"]

#: what a term compares (see the module docstring)
KINDS = ("adversarial", "pair", "cycle", "label", "feature", "source", "source_label")

#: a Ray Tune range: ``(kind, low, high)`` with kind ``uniform`` or ``loguniform``
Range = tuple[str, float, float]


@dataclass(frozen=True)
class LossTerm:
    """One row of Table 5."""

    name: str                       # the LossWeights field (``loss.<name>``)
    row: str                        # the survey's Table 5 row, "L1" .. "L12"
    kind: str                       # one of KINDS
    factory: Callable[..., Any]     # builds the term (an nn.Module)
    search: Range                   # default Ray Tune range of its weight
    optional: bool = True           # False: the framework's own objective applies it
    needs_stats: bool = False       # its factory takes the target domain's TissueStats

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"loss term {self.name!r}: kind {self.kind!r} not in {KINDS}")


TERMS: dict[str, LossTerm] = {t.name: t for t in (
    LossTerm("gan", "L1", "adversarial", GANLoss, ("uniform", 0.5, 2.0), optional=False),
    LossTerm("image", "L2", "pair", ImageLoss, ("loguniform", 10.0, 300.0), optional=False),
    LossTerm("cycle", "L3", "cycle", CycleLoss, ("loguniform", 1.0, 30.0), optional=False),
    LossTerm("gradient", "L4", "pair", GradientLoss, ("uniform", 0.0, 20.0)),
    LossTerm("sharpness", "L5", "pair", SharpnessLoss, ("uniform", 0.0, 20.0)),
    LossTerm("shape", "L6", "label", ShapeLoss, ("uniform", 0.0, 20.0)),
    LossTerm("perceptual", "L7", "feature", PerceptualLoss, ("uniform", 0.0, 10.0)),
    LossTerm("structure", "L8", "pair", StructureLoss, ("uniform", 0.0, 20.0)),
    LossTerm("style", "L9", "feature", StyleContentLoss, ("uniform", 0.0, 10.0)),
    LossTerm("self_reg", "L10", "source", SelfRegLoss, ("uniform", 0.0, 10.0)),
    LossTerm("frequency", "L11", "pair", FrequencyLoss, ("loguniform", 1.0, 100.0)),
    LossTerm("regulation", "L12", "pair", RegulationLoss, ("uniform", 0.0, 20.0)),
    LossTerm("mind", "L8", "source", MINDLoss, ("loguniform", 0.5, 50.0)),
    LossTerm("gradient_consistency", "L4", "source", GradientConsistencyLoss,
             ("loguniform", 0.1, 10.0)),
    LossTerm("shape_consistency", "L6", "source_label", ShapeConsistencyLoss,
             ("loguniform", 0.1, 10.0)),
    LossTerm("segment_consistency", "L6", "source_label", SegmentConsistencyLoss,
             ("loguniform", 0.01, 3.0), needs_stats=True),
    LossTerm("tissue_value", "L6", "source_label", TissueValueLoss,
             ("loguniform", 1.0, 100.0), needs_stats=True),
)}
"""Term name (a ``LossWeights`` field) -> :class:`LossTerm`, in Table-5 order, then the unpaired
source-referenced forms."""


def optional_terms(kind: str | None = None) -> list[str]:
    """Names of the optional terms (added by ``GeneratorTerms``), of one ``kind`` if given.

    >>> optional_terms("pair")
    ['gradient', 'sharpness', 'structure', 'frequency', 'regulation']
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return [n for n, t in TERMS.items() if t.optional and (kind is None or t.kind == kind)]
