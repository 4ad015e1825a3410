"""LAPGAN (Denton et al., 2015): a Laplacian pyramid of GANs, one per level, sampled coarse to fine.

Pyramid with ``K = fw.levels`` levels (survey eq. 2): ``I_0`` is the image,
``I_{k+1} = d(I_k)``, ``l_k = u(I_{k+1})`` and ``h_k = I_k - l_k`` for ``k < K``; the last level
is the low-pass residual ``I_K``. ``d`` is 2x2 (2x2x2) average pooling (a box blur and decimation
in one step), ``u`` bilinear (trilinear) 2x upsampling, ``align_corners=False``. The pair is exact
in the sense that matters: ``reconstruct(laplacian_pyramid(x, K)) == x`` up to float rounding.

K + 1 generators: ``G_K(z_K)`` draws ``I_K`` from noise (a small DCGAN-style net with Tanh);
``G_k(z_k, l_k)`` draws ``h_k`` (noise as an extra input plane, linear output). ``D_K`` judges
``I_K``; ``D_k`` judges ``h_k`` given ``l_k`` (``concat(h_k, l_k)``). Each level is trained on
the real pyramid of the batch, independently of the others (the paper): the losses of all
levels are summed, which gives each net exactly its own level's gradient, and Adam is per
parameter, so one optimizer over all generators equals one per level.

Sampling (survey eq. 3): ``I_K = G_K(z_K)``, then ``I_k = u(I_{k+1}) + G_k(z_k, u(I_{k+1}))``;
each ``I_k`` is clamped to [-1, 1] (the range of every real pyramid level) before it conditions
the next, finer level.

Recipe (``configure``): Adam lr 2e-4, beta1 0.5, vanilla GAN loss, BatchNorm, N(0, 0.02) init;
``full``: 64 x 64 images with K = 3 (four generators, coarsest 8 x 8: the survey's example),
batch 64, 64 filters. ``tiny`` / ``demo`` keep their small filter counts.

>>> x = torch.rand(2, 1, 32, 32) * 2 - 1
>>> pyr = laplacian_pyramid(x, 3)
>>> [tuple(p.shape[-2:]) for p in pyr]
[(32, 32), (16, 16), (8, 8), (4, 4)]
>>> bool(torch.allclose(reconstruct(pyr), x, atol=1e-6))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.config import FrameworkConfig
from gan_core.frameworks import register
from gan_core.frameworks.base import GANFramework
from gan_core.frameworks.dcgan import check_unconditional_input, dcgan_recipe, evaluating, image_shape
from gan_core.losses.adversarial import GANLoss, gradient_penalty
from gan_core.models.dcgan import LapGANCoarseGenerator, LapGANDiscriminator, LapGANLevelGenerator

__all__ = ["LAPGAN", "downsample", "upsample", "gaussian_pyramid", "laplacian_pyramid", "reconstruct"]


def _spatial_dims(x: Tensor, where: str) -> int:
    if x.dim() not in (4, 5):
        raise ValueError(f"{where}: expected (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    return x.dim() - 2


def downsample(x: Tensor) -> Tensor:
    """``d``: 2x average pooling over every spatial axis (each must be even)."""
    sd = _spatial_dims(x, "downsample")
    if any(s % 2 for s in x.shape[2:]):
        raise ValueError(f"downsample: spatial size {tuple(x.shape[2:])} must be even")
    return F.avg_pool2d(x, 2) if sd == 2 else F.avg_pool3d(x, 2)


def upsample(x: Tensor) -> Tensor:
    """``u``: 2x bilinear (2D) / trilinear (3D) upsampling, ``align_corners=False``."""
    sd = _spatial_dims(x, "upsample")
    return F.interpolate(x, scale_factor=2, mode="bilinear" if sd == 2 else "trilinear",
                         align_corners=False)


def _check_levels(x: Tensor, levels: int, where: str) -> None:
    _spatial_dims(x, where)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f"{where}: levels must be an int >= 0, got {levels!r}")
    if any(s % 2**levels for s in x.shape[2:]):
        raise ValueError(f"{where}: spatial size {tuple(x.shape[2:])} must be divisible by "
                         f"2**levels = {2**levels}")


def gaussian_pyramid(img: Tensor, levels: int) -> list[Tensor]:
    """``[I_0, ..., I_K]``: ``I_0 = img``, ``I_{k+1} = d(I_k)``."""
    _check_levels(img, levels, "gaussian_pyramid")
    out = [img]
    for _ in range(levels):
        out.append(downsample(out[-1]))
    return out


def laplacian_pyramid(img: Tensor, levels: int) -> list[Tensor]:
    """``[h_0, ..., h_{K-1}, I_K]`` with ``h_k = I_k - u(I_{k+1})`` (finest first)."""
    _check_levels(img, levels, "laplacian_pyramid")
    g = gaussian_pyramid(img, levels)
    return [g[k] - upsample(g[k + 1]) for k in range(levels)] + [g[-1]]


def reconstruct(pyramid: list[Tensor]) -> Tensor:
    """Inverse of :func:`laplacian_pyramid`: ``I_k = u(I_{k+1}) + h_k`` from the coarsest level."""
    if not pyramid:
        raise ValueError("reconstruct: empty pyramid")
    img = pyramid[-1]
    for h in reversed(pyramid[:-1]):
        low = upsample(img)
        if low.shape != h.shape:
            raise ValueError(f"reconstruct: level of shape {tuple(h.shape)} does not match the "
                             f"upsampled coarser level {tuple(low.shape)}")
        img = low + h
    return img


@register("lapgan")
class LAPGAN(GANFramework):
    @dataclass
    class Params(FrameworkConfig):
        """``fw.*`` of LAPGAN."""

        z_dim: int = 100        # noise dimension of the coarsest generator
        levels: int = 3         # pyramid levels K (K + 1 generators; the survey's example: 3)

    paired = True
    loss_defaults = {"gan": 1.0}
    search_space = {"loss.gan": ("uniform", 0.5, 2.0)}

    @classmethod
    def configure(cls, cfg, preset: str) -> None:
        dcgan_recipe(cfg, preset, "lapgan")

    @property
    def levels(self) -> int:
        return self.cfg.fw.levels

    @property
    def size(self) -> tuple[int, ...]:
        return image_shape(self.cfg)

    def build_networks(self) -> dict[str, nn.Module]:
        m, size, K = self.cfg.model, image_shape(self.cfg), self.cfg.fw.levels
        if m.in_channels != 0:
            raise ValueError(f"LAPGAN is unconditional: use task.name 'synth' (model.in_channels 0), "
                             f"got model.in_channels = {m.in_channels} (task {self.cfg.task.name!r})")
        if isinstance(K, bool) or K < 1:
            raise ValueError(f"fw.levels must be >= 1 for LAPGAN, got {K!r}")
        for name, s in zip(("data.patch_depth", "data.image_size", "data.image_size")[-len(size):], size):
            if s % 2**K:
                raise ValueError(f"{name} must be divisible by 2**fw.levels = {2**K} for LAPGAN, got {s}")
        c, sd = m.out_channels, m.spatial_dims
        nets: dict[str, nn.Module] = {}
        for k in range(K):
            lsize = tuple(s // 2**k for s in size)
            nets[f"G{k}"] = LapGANLevelGenerator(c, spatial_dims=sd, base_filters=m.g_filters, norm=m.norm)
            nets[f"D{k}"] = LapGANDiscriminator(2 * c, size=lsize, spatial_dims=sd,
                                                base_filters=m.d_filters, norm=m.norm)
        top = tuple(s // 2**K for s in size)
        nets[f"G{K}"] = LapGANCoarseGenerator(self.cfg.fw.z_dim, c, size=top, spatial_dims=sd,
                                              base_filters=m.g_filters, norm=m.norm)
        nets[f"D{K}"] = LapGANDiscriminator(c, size=top, spatial_dims=sd, base_filters=m.d_filters,
                                            norm=m.norm)
        return nets

    def optimizer_groups(self) -> dict[str, list[str]]:
        K = self.cfg.fw.levels
        return {"G": [f"G{k}" for k in range(K + 1)], "D": [f"D{k}" for k in range(K + 1)]}

    def __init__(self, cfg, device="cpu") -> None:
        super().__init__(cfg, device)
        self.crit = GANLoss(cfg.gan_mode)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.to_device(batch)
        real = b["B"].float()
        K, n = self.levels, real.shape[0]
        g = gaussian_pyramid(real, K)
        lows = [upsample(g[k + 1]) for k in range(K)]
        reals = [g[k] - lows[k] for k in range(K)] + [g[K]]  # h_0..h_{K-1}, I_K
        fakes = []
        with self.autocast():
            for k in range(K):
                z = torch.randn(n, 1, *lows[k].shape[2:], device=self.device)
                fakes.append(self.fwd[f"G{k}"](lows[k], z))
            fakes.append(self.fwd[f"G{K}"](torch.randn(n, self.cfg.fw.z_dim, device=self.device)))

        def d_in(k: int, x: Tensor) -> Tensor:
            return torch.cat([x.float(), lows[k]], 1) if k < K else x

        out: dict[str, Tensor] = {}
        D_nets = [self.nets[f"D{k}"] for k in range(K + 1)]
        self.set_requires_grad(D_nets, True)
        self.opts["D"].zero_grad(set_to_none=True)
        loss_D = real.new_zeros(())
        for k in range(K + 1):
            with self.autocast():
                pred_real = self.fwd[f"D{k}"](d_in(k, reals[k]))
                pred_fake = self.fwd[f"D{k}"](d_in(k, fakes[k].detach()))
            lk = 0.5 * (self.crit(pred_real, True) + self.crit(pred_fake, False))
            if self.cfg.gan_mode == "wgangp":
                lk = lk + gradient_penalty(self.fwd[f"D{k}"], d_in(k, reals[k]), d_in(k, fakes[k]))
            out[f"D{k}"] = lk.detach()
            loss_D = loss_D + lk
        loss_D.backward()
        self.opts["D"].step()

        self.set_requires_grad(D_nets, False)
        self.opts["G"].zero_grad(set_to_none=True)
        loss_G = real.new_zeros(())
        for k in range(K + 1):
            with self.autocast():
                pred = self.frozen[f"D{k}"](d_in(k, fakes[k]))
            lk = self.crit(pred, True, for_discriminator=False) * self.cfg.loss.gan
            out[f"G{k}"] = lk.detach()
            loss_G = loss_G + lk
        loss_G.backward()
        self.opts["G"].step()
        self.set_requires_grad(D_nets, True)
        return {**out, "G": loss_G.detach(), "D": loss_D.detach()}

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_pyramid: bool = False) -> Tensor | list[Tensor]:
        """``n`` samples ``(n, 1, *size)`` in [-1, 1], float32, coarse to fine, eval mode.

        Noise is drawn on the CPU from ``generator`` (seeded: reproducible on any device; ``None``:
        the global RNG). ``return_pyramid``: the Gaussian levels ``[I_0, ..., I_K]`` instead.
        """
        if n < 1:
            raise ValueError(f"LAPGAN.sample: n must be >= 1, got {n}")
        K, size = self.levels, self.size
        names = [f"G{k}" for k in range(K + 1)]
        with evaluating(self, names):
            z = torch.randn(n, self.cfg.fw.z_dim, generator=generator).to(self.device)
            img = self.nets[f"G{K}"](z).float().clamp(-1, 1)
            levels = [img]
            for k in range(K - 1, -1, -1):
                low = upsample(img)
                zk = torch.randn(n, 1, *(s // 2**k for s in size), generator=generator).to(self.device)
                img = (low + self.nets[f"G{k}"](low, zk).float()).clamp(-1, 1)
                levels.insert(0, img)
        if return_pyramid:
            return [t.contiguous() for t in levels]
        return img.contiguous()

    def generate(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` is ``(N, 0, *size)`` (the synth task's empty input): N fresh samples."""
        return self.sample(check_unconditional_input(self, x, self.size), generator)
