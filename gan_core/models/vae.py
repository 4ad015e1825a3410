"""UNIT's coupled VAEs with a shared latent space (Liu, Breuel & Kautz, 2017), 2D or 3D.

Two encoder/decoder pairs ``(E_A, G_A)`` and ``(E_B, G_B)``. Each encoder is a private part
(reflect-padded conv7 stem, ``n_downsampling`` stride-2 conv4 layers, ``n_private`` residual
blocks) followed by the *shared* residual block(s); each decoder starts with the *shared*
residual block(s), then its private blocks, nearest-neighbour upsampling + conv5 per level and a
conv7 + Tanh output (the layer plan of mingyuliutw/UNIT). The shared parts are one ``nn.Module``
instance held by both encoders (and one held by both decoders): ``parameters()`` lists their
weights once, so one optimizer updates them once.

The latent is the encoder output ``mu``; as in the authors' code the posterior is
``N(mu, I)`` (unit variance), so ``z = mu + N(0, I)`` in training, ``z = mu`` in eval mode, and
the KL term reduces to ``mean(mu ** 2)`` (:func:`latent_kl`).

>>> vae = SharedLatentVAE(1, 1, base_filters=4, n_private=1)
>>> vae.E_A.shared is vae.E_B.shared and vae.G_A.shared is vae.G_B.shared
True
>>> _ = vae.eval()
>>> vae.translate(torch.zeros(2, 1, 16, 16), "A", "B").shape
torch.Size([2, 1, 16, 16])
>>> sorted(vae(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)))[:4]
['mu_A', 'mu_B', 'mu_ab', 'mu_ba']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import (
    NORMS,
    PADDINGS,
    check_divisible,
    check_input,
    check_spatial_dims,
    conv,
    norm_layer,
    pad_layer,
    uses_bias,
)
from .resnet import ResnetBlock

__all__ = ["VAEEncoder", "VAEDecoder", "SharedLatentVAE", "residual_stack", "latent_kl",
           "sample_latent"]

DOMAINS = ("A", "B")


def latent_kl(mu: Tensor) -> Tensor:
    """KL(N(mu, I) || N(0, I)) up to constants and scale: ``mean(mu ** 2)`` in float32
    (``__compute_kl`` of mingyuliutw/UNIT).

    >>> float(latent_kl(torch.zeros(2, 4, 3, 3))), float(latent_kl(torch.full((1, 2), 3.0)))
    (0.0, 9.0)
    """
    return mu.float().pow(2).mean()


def sample_latent(mu: Tensor, training: bool, generator: torch.Generator | None = None) -> Tensor:
    """``mu + N(0, I)`` when ``training`` (reparameterised, unit variance), else ``mu``.

    ``generator``: the noise's RNG (on ``mu``'s device; default the global one).

    >>> mu = torch.zeros(2, 3)
    >>> torch.equal(sample_latent(mu, False), mu), bool(sample_latent(mu, True).abs().sum() > 0)
    (True, True)
    """
    if not training:
        return mu
    return mu + torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)


def residual_stack(channels: int, n: int, *, spatial_dims: int, norm: str,
                   padding: str = "reflect") -> nn.Sequential:
    """``n`` :class:`ResnetBlock` of ``channels`` (an empty Sequential, the identity, for 0).

    >>> len(residual_stack(8, 2, spatial_dims=3, norm="instance"))
    2
    """
    return nn.Sequential(*(ResnetBlock(channels, spatial_dims=spatial_dims, norm=norm, padding=padding)
                           for _ in range(n)))


def _check_args(owner: str, spatial_dims: int, base_filters: int, n_downsampling: int,
                n_private: int, norm: str, padding: str) -> None:
    check_spatial_dims(spatial_dims)
    if norm not in NORMS:
        raise ValueError(f"{owner}: norm must be one of {list(NORMS)}, got {norm!r}")
    if padding not in PADDINGS:
        raise ValueError(f"{owner}: padding must be one of {list(PADDINGS)}, got {padding!r}")
    if base_filters < 1 or n_downsampling < 0 or n_private < 0:
        raise ValueError(f"{owner}: base_filters must be >= 1 and n_downsampling, n_private >= 0; "
                         f"got {base_filters}, {n_downsampling}, {n_private}")


class VAEEncoder(nn.Module):
    """Image -> latent mean: ``shared(private(x))``.

    ``private``: pad 3, conv7, norm, ReLU; ``n_downsampling`` x (pad 1, conv4 stride 2, norm,
    ReLU) doubling the channels; ``n_private`` residual blocks. ``shared``: any module on
    ``base_filters * 2**n_downsampling`` channels (the same instance may serve several encoders).

    >>> enc = VAEEncoder(2, nn.Identity(), spatial_dims=3, base_filters=4, n_downsampling=1)
    >>> enc(torch.zeros(1, 2, 4, 8, 8)).shape
    torch.Size([1, 8, 2, 4, 4])
    """

    def __init__(self, in_channels: int, shared: nn.Module, *, spatial_dims: int = 2,
                 base_filters: int = 64, n_downsampling: int = 2, n_private: int = 3,
                 norm: str = "instance", padding: str = "reflect") -> None:
        super().__init__()
        _check_args("VAEEncoder", spatial_dims, base_filters, n_downsampling, n_private, norm, padding)
        if in_channels < 1:
            raise ValueError(f"VAEEncoder: in_channels must be >= 1, got {in_channels}")
        self.spatial_dims, self.n_downsampling = spatial_dims, n_downsampling
        conv_cls, bias, nf = conv(spatial_dims), uses_bias(norm), base_filters
        layers: list[nn.Module] = [pad_layer(padding, spatial_dims, 3),
                                   conv_cls(in_channels, nf, kernel_size=7, bias=bias),
                                   norm_layer(norm, spatial_dims, nf), nn.ReLU(True)]
        for _ in range(n_downsampling):
            layers += [pad_layer(padding, spatial_dims, 1),
                       conv_cls(nf, nf * 2, kernel_size=4, stride=2, bias=bias),
                       norm_layer(norm, spatial_dims, nf * 2), nn.ReLU(True)]
            nf *= 2
        layers.append(residual_stack(nf, n_private, spatial_dims=spatial_dims, norm=norm, padding=padding))
        self.out_channels = nf
        self.private = nn.Sequential(*layers)
        self.shared = shared

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.spatial_dims, "VAEEncoder")
        multiple = 2**self.n_downsampling
        check_divisible(x, multiple, "VAEEncoder", f"2**n_downsampling = {multiple}")
        return self.shared(self.private(x))


class VAEDecoder(nn.Module):
    """Latent -> image in [-1, 1]: ``private(shared(z))``.

    ``private``: ``n_private`` residual blocks; ``n_upsampling`` x (nearest x2 upsampling, pad 2,
    conv5, norm, ReLU) halving the channels; pad 3, conv7, Tanh.

    >>> dec = VAEDecoder(1, nn.Identity(), base_filters=4, n_upsampling=2, n_private=1)
    >>> dec(torch.zeros(1, 16, 4, 4)).shape
    torch.Size([1, 1, 16, 16])
    """

    def __init__(self, out_channels: int, shared: nn.Module, *, spatial_dims: int = 2,
                 base_filters: int = 64, n_upsampling: int = 2, n_private: int = 3,
                 norm: str = "instance", padding: str = "reflect") -> None:
        super().__init__()
        _check_args("VAEDecoder", spatial_dims, base_filters, n_upsampling, n_private, norm, padding)
        if out_channels < 1:
            raise ValueError(f"VAEDecoder: out_channels must be >= 1, got {out_channels}")
        self.spatial_dims = spatial_dims
        conv_cls, bias = conv(spatial_dims), uses_bias(norm)
        nf = base_filters * 2**n_upsampling
        self.in_channels = nf
        layers: list[nn.Module] = [residual_stack(nf, n_private, spatial_dims=spatial_dims, norm=norm,
                                                  padding=padding)]
        for _ in range(n_upsampling):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       pad_layer(padding, spatial_dims, 2),
                       conv_cls(nf, nf // 2, kernel_size=5, bias=bias),
                       norm_layer(norm, spatial_dims, nf // 2), nn.ReLU(True)]
            nf //= 2
        layers += [pad_layer(padding, spatial_dims, 3), conv_cls(nf, out_channels, kernel_size=7),
                   nn.Tanh()]
        self.shared = shared
        self.private = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        check_input(z, self.spatial_dims, "VAEDecoder")
        return self.private(self.shared(z))


class SharedLatentVAE(nn.Module):
    """The UNIT generator: VAEs ``(E_A, G_A)`` (domain A) and ``(E_B, G_B)`` (domain B).

    ``n_shared`` residual blocks end both encoders (one module, ``shared_encoder``) and
    ``n_shared`` start both decoders (one module, ``shared_decoder``); each side also has
    ``n_private`` blocks of its own (UNIT: 3 private + 1 shared). Spatial sizes must be divisible
    by ``2**n_downsampling``.

    ``forward(x_a, x_b)`` is one generator pass of UNIT training (latents sampled as
    :func:`sample_latent` in training mode) and returns a dict: ``mu_A``/``mu_B`` (latent means),
    ``x_aa``/``x_bb`` (within-domain reconstructions), ``x_ab``/``x_ba`` (translations),
    ``mu_ab`` = E_B(x_ab) / ``mu_ba`` = E_A(x_ba) (re-encoded means), ``x_aba`` = G_A(z_ab) /
    ``x_bab`` = G_B(z_ba) (cycle reconstructions). ``generator``: the latent noise's RNG.
    """

    def __init__(self, channels_a: int = 1, channels_b: int = 1, *, spatial_dims: int = 2,
                 base_filters: int = 64, n_downsampling: int = 2, n_private: int = 3,
                 n_shared: int = 1, norm: str = "instance", padding: str = "reflect") -> None:
        super().__init__()
        if n_shared < 1:
            raise ValueError(f"SharedLatentVAE: n_shared must be >= 1 (the shared latent layers), "
                             f"got {n_shared}")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.n_downsampling = n_downsampling
        ch = base_filters * 2**n_downsampling
        kw = dict(spatial_dims=spatial_dims, norm=norm, padding=padding)
        enc_shared = residual_stack(ch, n_shared, **kw)
        dec_shared = residual_stack(ch, n_shared, **kw)
        net = dict(base_filters=base_filters, n_private=n_private, **kw)
        self.E_A = VAEEncoder(channels_a, enc_shared, n_downsampling=n_downsampling, **net)
        self.E_B = VAEEncoder(channels_b, enc_shared, n_downsampling=n_downsampling, **net)
        self.G_A = VAEDecoder(channels_a, dec_shared, n_upsampling=n_downsampling, **net)
        self.G_B = VAEDecoder(channels_b, dec_shared, n_upsampling=n_downsampling, **net)

    @property
    def shared_encoder(self) -> nn.Module:
        """The residual block(s) ending both encoders (one instance)."""
        return self.E_A.shared

    @property
    def shared_decoder(self) -> nn.Module:
        """The residual block(s) starting both decoders (one instance)."""
        return self.G_A.shared

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2**self.n_downsampling

    def _pair(self, domain: str) -> tuple[VAEEncoder, VAEDecoder]:
        if domain == "A":
            return self.E_A, self.G_A
        if domain == "B":
            return self.E_B, self.G_B
        raise ValueError(f"SharedLatentVAE: domain must be one of {list(DOMAINS)}, got {domain!r}")

    def encode(self, x: Tensor, domain: str) -> Tensor:
        """Latent mean of ``x`` from domain ``domain``."""
        return self._pair(domain)[0](x)

    def decode(self, z: Tensor, domain: str) -> Tensor:
        """Image in domain ``domain`` from latent ``z``."""
        return self._pair(domain)[1](z)

    def translate(self, x: Tensor, src: str, dst: str, generator: torch.Generator | None = None) -> Tensor:
        """``G_dst(z)`` with ``z`` sampled from ``E_src(x)`` (the mean itself in eval mode)."""
        return self.decode(sample_latent(self.encode(x, src), self.training, generator), dst)

    def forward(self, x_a: Tensor, x_b: Tensor,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        def z(mu: Tensor) -> Tensor:
            return sample_latent(mu, self.training, generator)

        mu_a, mu_b = self.E_A(x_a), self.E_B(x_b)
        z_a, z_b = z(mu_a), z(mu_b)
        x_ab, x_ba = self.G_B(z_a), self.G_A(z_b)
        mu_ab, mu_ba = self.E_B(x_ab), self.E_A(x_ba)
        return {
            "mu_A": mu_a, "mu_B": mu_b,
            "x_aa": self.G_A(z_a), "x_bb": self.G_B(z_b),
            "x_ab": x_ab, "x_ba": x_ba,
            "mu_ab": mu_ab, "mu_ba": mu_ba,
            "x_aba": self.G_A(z(mu_ab)), "x_bab": self.G_B(z(mu_ba)),
        }
