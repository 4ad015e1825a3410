"""CycleGAN's batched step changes nothing: G_A on [a; b], G_B on [G_A(a); b; a] and each D on
[real; pooled fake] (one backward for both Ds) give the separate calls' losses and gradients.

Tolerance: both paths compute the same per-sample values; only the float32 summation order
differs (a batch of 2n or 3n lets the convolution kernels block their reductions differently, and
a weight gradient is summed over all n*H*W products at once instead of per call). A reordered
sum of k terms differs by at most ~k * 2**-24 * sum(|terms|), typically sqrt(k) * 2**-24 * sum:
at k = 3 * 2 * 32 * 32 ~ 6e3 products per weight, ~5e-6 of the terms' scale. Hence rtol 1e-4
(a margin of ~20) and an absolute floor of 1e-5 of the largest gradient of the same network: a
conv bias before an instance norm has an exactly-zero gradient in exact arithmetic, so what both
paths hold there is rounding noise on that scale.
"""

from __future__ import annotations

import pytest
import torch

from gan_core.frameworks import build_framework
from gan_core.presets import apply_overrides, preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL, ABS_OF_NET_MAX = 1e-4, 1e-5


def _batch(n: int = 3, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(n, 1, size, size, generator=g) * 2 - 1 for k in ("A", "B")}


def _cfg(**over):
    return apply_overrides(preset("tiny", "cyclegan"), {"amp": "off", **over})


def _one_step(cfg, batched: bool, batch: dict[str, torch.Tensor]):
    """Losses, every parameter's gradient after one step, and the forward calls per net."""
    torch.manual_seed(0)
    fw = build_framework(cfg)
    assert fw.batch_g and fw.batch_d  # per-sample nets: the batched path is the default
    fw.batch_g = fw.batch_d = batched
    calls = {k: 0 for k in fw.nets}
    for k, net in fw.nets.items():
        net.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
    torch.manual_seed(1)  # wgangp's interpolation draws
    losses = fw.train_step(batch)
    grads = {f"{k}.{pn}": p.grad.clone() for k, net in fw.nets.items()
             for pn, p in net.named_parameters()}
    return losses, grads, calls


def _assert_same(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], rtol: float = RTOL,
                 abs_of_net_max: float = ABS_OF_NET_MAX) -> None:
    """Every gradient within ``rtol`` and ``abs_of_net_max`` times its network's largest one."""
    assert ref.keys() == got.keys()
    net_max: dict[str, float] = {}
    for k, g in ref.items():
        net = k.split(".")[0]
        net_max[net] = max(net_max.get(net, 0.0), float(g.abs().max()))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=abs_of_net_max * net_max[k.split(".")[0]],
                                   msg=lambda m: f"{k}: {m}")


CASES = {  # id: overrides
    "instance": {"model.norm": "instance", "model.d_norm": "instance"},
    "none": {"model.norm": "none", "model.d_norm": "none"},
    "wgangp": {"model.norm": "instance", "gan_mode": "wgangp"},
    "identity0": {"model.norm": "instance", "fw.identity": 0.0},
    # the published G family (reflection pads) and a D with a list output (three scales: 64 px)
    "resnet_multiscale": {"model.generator": "resnet", "model.n_blocks": 1, "model.norm": "instance",
                          "model.discriminator": "multiscale", "model.d_layers": 2},
}
SIZE = {"resnet_multiscale": 64}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_step_equals_separate_calls(case):
    cfg = _cfg(**CASES[case])
    batch = _batch(size=SIZE.get(case, 32))
    l_sep, g_sep, c_sep = _one_step(cfg, False, batch)
    l_bat, g_bat, c_bat = _one_step(cfg, True, batch)
    # the paths differ: 6 generator calls become 3 (4 become 3 without identity), each D's real
    # and fake passes one (the generator phase's D call and wgangp's penalty call stay)
    n_g, gp = 6 if cfg.fw.identity > 0 else 4, int(cfg.gan_mode == "wgangp")
    assert c_sep["G_A"] + c_sep["G_B"] == n_g and c_bat["G_A"] + c_bat["G_B"] == 3
    assert c_sep["D_A"] == c_sep["D_B"] == 3 + gp and c_bat["D_A"] == c_bat["D_B"] == 2 + gp
    assert l_sep.keys() == l_bat.keys()
    assert (float(l_sep["idt_A"]) > 0) == (cfg.fw.identity > 0)
    for k in l_sep:  # losses: means of per-sample values, the same tolerance
        torch.testing.assert_close(l_bat[k], l_sep[k], rtol=RTOL, atol=1e-6, msg=lambda m: f"loss {k}: {m}")
    assert {k.split(".")[0] for k in g_sep} == {"G_A", "G_B", "D_A", "D_B"}
    assert all(g.abs().sum() > 0 for k, g in g_sep.items() if k.endswith("weight"))
    _assert_same(g_sep, g_bat)


@pytest.mark.parametrize("over,batch_g,batch_d", [
    ({"model.norm": "batch"}, False, True),
    ({"model.d_norm": "batch"}, True, False),
    ({"model.dropout": True}, False, True),
])
def test_batch_norm_or_dropout_keeps_separate_calls(over, batch_g, batch_d):
    fw = build_framework(_cfg(**over))
    assert (fw.batch_g, fw.batch_d) == (batch_g, batch_d)
    losses = fw.train_step(_batch(n=2))
    assert all(torch.isfinite(v) for v in losses.values())


def test_bf16_channels_last_batched_step():
    """Mixed precision and channels_last: the batched step runs and matches the separate calls
    to bf16's resolution. The fakes (bf16) are concatenated with the reals (float32) in float32,
    exactly, and the first convolution casts both back: the same inputs. What may differ is the
    rounding of bf16 results computed with another blocking, one ulp (2**-8 relative) each,
    compounded through a few layers: 8 ulps (3e-2), relative and of the network's largest
    gradient. (Observed here: the losses equal, gradients within 5e-3 of the largest.)"""
    cfg = _cfg(amp="bf16", channels_last=True, **CASES["instance"])
    batch = _batch()
    l_sep, g_sep, _ = _one_step(cfg, False, batch)
    l_bat, g_bat, _ = _one_step(cfg, True, batch)
    for k in l_sep:
        torch.testing.assert_close(l_bat[k], l_sep[k], rtol=3e-2, atol=1e-3, msg=lambda m: f"loss {k}: {m}")
    _assert_same(g_sep, g_bat, rtol=3e-2, abs_of_net_max=3e-2)
