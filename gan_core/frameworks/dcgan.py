"""DCGAN (Radford et al., 2016): images from noise; and its label-conditioned variant.

min_G max_D  E[log D(x)] + E[log(1 - D(G(z)))]                (vanilla GAN loss, survey eq. 1)

Unconditional (task ``synth``, ``model.in_channels == 0``): ``G(z)`` with ``z ~ N(0, I)`` of
``fw.z_dim`` (100) dimensions, the fractionally-strided generator and the strided discriminator
of ``gan_core.models.dcgan`` (BatchNorm, ReLU / LeakyReLU(0.2), Tanh, N(0, 0.02) init).

Conditional (``model.in_channels > 0``, e.g. task ``labels2ct``: a one-hot tissue label map):
``G(x, z)`` encodes the map to the 4x4 level, concatenates the tiled noise there and decodes with
the DCGAN decoder, with U-Net skip connections from the encoder; ``D`` judges
``concat(x, image)``. Conditional synthesis from segmentation maps. An L1 term
``loss.image * |G(x, z) - y|`` is added when ``loss.image > 0``; DCGAN's recipe has none, so its
``loss_defaults`` set ``loss.image = 0`` in every preset (a config built without a preset keeps
``LossWeights.image = 100``, pix2pix's weight). The unconditional model ignores ``loss.image``.

Recipe (``configure``, every preset): Adam lr 2e-4, beta1 0.5, vanilla GAN loss, no image pool,
BatchNorm, N(0, 0.02) init. ``full``: 64 x 64 images, batch 64, 64 filters (the paper's LSUN
model). ``tiny`` / ``demo`` keep their small filter counts (8 / 32) but use the same BatchNorm,
init and optimizer: BatchNorm is part of what makes DCGAN train, so it is not dropped to save time.

>>> from gan_core.presets import preset
>>> from gan_core.frameworks import build_framework
>>> fw = build_framework(preset("tiny", "dcgan", task="synth"))
>>> fw.sample(2, torch.Generator().manual_seed(0)).shape
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.config import FrameworkConfig
from gan_core.frameworks import register
from gan_core.frameworks.base import GANFramework
from gan_core.losses.adversarial import GANLoss, gradient_penalty
from gan_core.models.dcgan import (
    ConditionalDCGANGenerator,
    DCGANDiscriminator,
    DCGANGenerator,
    dcgan_up_steps,
)

__all__ = ["DCGAN", "image_shape", "evaluating", "check_unconditional_input", "dcgan_recipe"]


def image_shape(cfg) -> tuple[int, ...]:
    """Spatial size of a training sample: ``(S, S)`` in 2D, ``(patch_depth, S, S)`` in 3D."""
    d, sd = cfg.data, cfg.model.spatial_dims
    if sd == 3:
        return (d.patch_depth, d.image_size, d.image_size)
    if sd == 2:
        return (d.image_size, d.image_size)
    raise ValueError(f"model.spatial_dims must be 2 or 3, got {sd!r}")


@contextlib.contextmanager
def evaluating(fw: GANFramework, names: list[str]) -> Iterator[None]:
    """Nets ``names`` in eval mode, no grad, the framework's autocast; modes restored after."""
    modes = {k: fw.nets[k].training for k in names}
    for k in names:
        fw.nets[k].eval()
    try:
        with torch.no_grad(), fw.autocast():
            yield
    finally:
        for k, mode in modes.items():
            fw.nets[k].train(mode)


def check_unconditional_input(fw: GANFramework, x: Tensor, size: tuple[int, ...]) -> int:
    """The batch size of an empty-channel input ``(N, 0, *size)``; ValueError otherwise."""
    if x.dim() != len(size) + 2 or x.shape[1] != 0 or tuple(x.shape[2:]) != size:
        raise ValueError(f"{fw.name}.generate: unconditional model expects (N, 0, {', '.join(map(str, size))}) "
                         f"(the configured data.image_size), got {tuple(x.shape)}; use sample(n) "
                         "for samples without an input")
    return int(x.shape[0])


def dcgan_recipe(cfg, preset: str, name: str) -> None:
    """Radford et al.'s recipe (shared with LAPGAN): vanilla GAN, Adam 2e-4 / beta1 0.5,
    BatchNorm, N(0, 0.02) init, no image pool; ``full``: 64 x 64 images, batch 64, 64 filters."""
    m = cfg.model
    cfg.gan_mode = "vanilla"
    cfg.optim.lr, cfg.optim.beta1 = 2e-4, 0.5
    m.generator = m.discriminator = name
    m.norm, m.init_type, m.init_gain, m.dropout = "batch", "normal", 0.02, False
    if preset == "full":
        cfg.data.image_size, cfg.data.batch_size = 64, 64
        m.g_filters = m.d_filters = 64


@register("dcgan")
class DCGAN(GANFramework):
    @dataclass
    class Params(FrameworkConfig):
        """``fw.*`` of DCGAN."""

        z_dim: int = 100        # noise dimension (Radford et al.: 100)

    paired = True
    # loss.image only matters for the conditional variant, where it is optional and 0 by default;
    # it is left out of the search space so that tuning an unconditional run does not search a
    # dead weight.
    loss_defaults = {"gan": 1.0, "image": 0.0}
    search_space = {"loss.gan": ("uniform", 0.5, 2.0)}

    @classmethod
    def configure(cls, cfg, preset: str) -> None:
        dcgan_recipe(cfg, preset, "dcgan")

    @property
    def conditional(self) -> bool:
        return self.cfg.model.in_channels > 0

    @property
    def size(self) -> tuple[int, ...]:
        return image_shape(self.cfg)

    def build_networks(self) -> dict[str, nn.Module]:
        m, size = self.cfg.model, image_shape(self.cfg)
        dcgan_up_steps(self.cfg.data.image_size, "data.image_size")
        if m.spatial_dims == 3:
            k = dcgan_up_steps(self.cfg.data.image_size)
            if self.cfg.data.patch_depth % 2**k:
                raise ValueError(f"data.patch_depth must be divisible by 2**{k} = {2**k} for DCGAN at "
                                 f"data.image_size={self.cfg.data.image_size}, got {self.cfg.data.patch_depth}")
        kw = dict(size=size, spatial_dims=m.spatial_dims, norm=m.norm)
        if self.conditional:
            G: nn.Module = ConditionalDCGANGenerator(m.in_channels, m.out_channels, z_dim=self.cfg.fw.z_dim,
                                                     base_filters=m.g_filters, **kw)
        else:
            G = DCGANGenerator(self.cfg.fw.z_dim, m.out_channels, base_filters=m.g_filters, **kw)
        D = DCGANDiscriminator(m.in_channels + m.out_channels, base_filters=m.d_filters, **kw)
        return {"G": G, "D": D}

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"G": ["G"], "D": ["D"]}

    def __init__(self, cfg, device="cpu") -> None:
        super().__init__(cfg, device)
        self.crit = GANLoss(cfg.gan_mode)

    def _d_input(self, cond: Tensor, img: Tensor) -> Tensor:
        return torch.cat([cond, img.to(cond.dtype)], 1) if self.conditional else img

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.to_device(batch)
        A, real = b["A"], b["B"]
        w = self.cfg.loss
        z = torch.randn(real.shape[0], self.cfg.fw.z_dim, device=self.device)
        with self.autocast():
            fake = self.fwd["G"](A, z) if self.conditional else self.fwd["G"](z)

        # D: real -> 1, generated -> 0 (separate batches, as the paper: BatchNorm statistics per batch)
        D = self.nets["D"]
        self.set_requires_grad([D], True)
        self.opts["D"].zero_grad(set_to_none=True)
        with self.autocast():
            pred_real = self.fwd["D"](self._d_input(A, real))
            pred_fake = self.fwd["D"](self._d_input(A, fake.detach()))
        loss_D_real = self.crit(pred_real, True)
        loss_D_fake = self.crit(pred_fake, False)
        loss_D = 0.5 * (loss_D_real + loss_D_fake)
        if self.cfg.gan_mode == "wgangp":
            loss_D = loss_D + gradient_penalty(self.fwd["D"], self._d_input(A, real),
                                               self._d_input(A, fake))
        loss_D.backward()
        self.opts["D"].step()

        # G: fool D (non-saturating), optionally stay close to the target (conditional only)
        self.set_requires_grad([D], False)
        self.opts["G"].zero_grad(set_to_none=True)
        with self.autocast():
            pred = self.frozen["D"](self._d_input(A, fake))
        loss_G_GAN = self.crit(pred, True, for_discriminator=False) * w.gan
        out = {"G_GAN": loss_G_GAN.detach()}
        loss_G = loss_G_GAN
        if self.conditional:
            loss_G_L1 = F.l1_loss(fake.float(), real.float()) * w.image if w.image > 0 else loss_G_GAN.new_zeros(())
            loss_G = loss_G + loss_G_L1
            out["G_L1"] = loss_G_L1.detach()
        loss_G.backward()
        self.opts["G"].step()
        self.set_requires_grad([D], True)
        return {**out, "G": loss_G.detach(), "D_real": loss_D_real.detach(),
                "D_fake": loss_D_fake.detach(), "D": loss_D.detach()}

    @staticmethod
    def _noise(n: int, z_dim: int, generator: torch.Generator | None) -> Tensor:
        # drawn on the CPU so a seeded generator gives the same samples on any device
        return torch.randn(n, z_dim, generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` unconditional samples ``(n, 1, *size)`` in [-1, 1], float32, eval mode.

        A seeded CPU ``generator`` makes them reproducible; ``None`` uses the global RNG.
        """
        if self.conditional:
            raise ValueError("DCGAN.sample: the model is conditional (model.in_channels = "
                             f"{self.cfg.model.in_channels}); use generate(label_map)")
        if n < 1:
            raise ValueError(f"DCGAN.sample: n must be >= 1, got {n}")
        z = self._noise(n, self.cfg.fw.z_dim, generator).to(self.device)
        with evaluating(self, ["G"]):
            y = self.nets["G"](z)
        return y.float().contiguous()

    def generate(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Unconditional: ``x`` is ``(N, 0, *size)`` -> N fresh samples. Conditional: ``x`` is the
        label map ``(N, in_channels, *S)`` -> ``G(x, z)`` ``(N, 1, *S)``; ``S`` need not be the
        training size (replicate-padded to the encoder's multiple, cropped back)."""
        m = self.cfg.model
        if not self.conditional:
            return self.sample(check_unconditional_input(self, x, self.size), generator)
        if x.dim() != m.spatial_dims + 2 or x.shape[1] != m.in_channels:
            raise ValueError(f"DCGAN.generate: expected a condition with model.in_channels = "
                             f"{m.in_channels} channels and {m.spatial_dims} spatial axes, got {tuple(x.shape)}")
        mult = self.nets["G"].multiple
        spatial = x.shape[2:]
        pads = [(-s) % mult for s in spatial]
        x = x.to(self.device, torch.float32)
        if any(pads):
            flat = [p for q in reversed(pads) for p in (q // 2, q - q // 2)]
            x = F.pad(x, flat, mode="replicate")
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self._noise(x.shape[0], self.cfg.fw.z_dim, generator).to(self.device)
        with evaluating(self, ["G"]):
            y = self.nets["G"](x, z)
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial))
        return y[(slice(None), slice(None), *crop)].float().contiguous()
