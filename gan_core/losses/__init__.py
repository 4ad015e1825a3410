"""The loss library of the survey's Table 5 (L1 adversarial ... L12 regulation).

Every term is a small ``nn.Module`` (or function) that takes tensors in [-1, 1] shaped
``(N, C, H, W)`` (2D) or ``(N, C, D, H, W)`` (3D), returns a scalar tensor and is differentiable
with respect to the prediction. Targets (and, for self-regularisation, the source image) are
treated as constants: no gradient flows into them.

=====  ============  ==================  ==================================================
Table  ``TERMS`` key module              here
=====  ============  ==================  ==================================================
L1     gan           ``adversarial``     :class:`GANLoss`, :func:`gradient_penalty`
L2     image         ``image``           :class:`ImageLoss` (L1 / L2)
L3     cycle         ``image``           :func:`cycle_loss`, :class:`CycleLoss`
L4     gradient      ``image``           :class:`GradientLoss`
L5     sharpness     ``image``           :class:`SharpnessLoss`
L6     shape         ``shape``           :class:`ShapeLoss`
L7     perceptual    ``features``        :class:`PerceptualLoss` (+ :class:`ConvEncoder`)
L8     structure     ``structure``       :class:`StructureLoss`, :func:`ssim`, :func:`ms_ssim`
L9     style         ``features``        :class:`StyleContentLoss`, :func:`gram_matrix`
L10    self_reg      ``image``           :class:`SelfRegLoss`
L11    frequency     ``frequency``       :class:`FrequencyLoss`
L12    regulation    ``image``           :class:`RegulationLoss`
L8     mind          ``consistency``     :class:`MINDLoss` (translation vs its own source)
L4     gradient_c.   ``consistency``     :class:`GradientConsistencyLoss` (vs its source)
L6     shape_c.      ``consistency``     :class:`ShapeConsistencyLoss` (vs source labels)
L6     segment_c.    ``segment``         :class:`SegmentConsistencyLoss` (CT segmentor vs
                                         source labels; :class:`TissueStats`)
L6     tissue_value  ``segment``         :class:`TissueValueLoss` (target tissue means vs
                                         source labels; :class:`TissueStats`)
=====  ============  ==================  ==================================================

``TERMS`` (``gan_core.losses.table``) is the one table of them, keyed exactly like the weights in
``gan_core.config.LossWeights`` (``loss.<key>``): Table-5 row, kind, factory, default Tune range.

>>> import torch
>>> float(TERMS["image"].factory()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
0.0
"""

from __future__ import annotations

from gan_core.losses.adversarial import GAN_MODES, GANLoss, gradient_penalty
from gan_core.losses.consistency import (GradientConsistencyLoss, MINDLoss, ShapeConsistencyLoss,
                                         mind_descriptor)
from gan_core.losses.features import (ConvEncoder, FeatureExtractor, PerceptualLoss,
                                      StyleContentLoss, gram_matrix)
from gan_core.losses.frequency import FrequencyLoss
from gan_core.losses.image import (CycleLoss, GradientLoss, ImageLoss, RegulationLoss,
                                   SelfRegLoss, SharpnessLoss, cycle_loss)
from gan_core.losses.segment import SegmentConsistencyLoss, TissueStats, TissueValueLoss
from gan_core.losses.shape import ShapeLoss
from gan_core.losses.structure import MS_SSIM_WEIGHTS, StructureLoss, ms_ssim, ssim
from gan_core.losses.table import KINDS, TERMS, LossTerm, optional_terms

__all__ = [
    "GAN_MODES", "GANLoss", "gradient_penalty", "ImageLoss", "cycle_loss", "CycleLoss",
    "GradientLoss", "SharpnessLoss", "ShapeLoss", "ConvEncoder", "FeatureExtractor",
    "PerceptualLoss", "ssim", "ms_ssim", "MS_SSIM_WEIGHTS", "StructureLoss", "gram_matrix",
    "StyleContentLoss", "SelfRegLoss", "FrequencyLoss", "RegulationLoss", "KINDS", "LossTerm",
    "TERMS", "optional_terms", "mind_descriptor", "MINDLoss", "GradientConsistencyLoss",
    "ShapeConsistencyLoss", "SegmentConsistencyLoss", "TissueStats", "TissueValueLoss",
]
