"""The step's speed-ups change nothing: batched D = two D passes, ScheduledLR = LambdaLR."""

import subprocess
import sys
import warnings

import pytest
import torch

from gan_core.frameworks import build_framework
from gan_core.frameworks.base import ScheduledLR, linear_decay, per_sample_net
from gan_core.presets import apply_overrides, preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(n, 1, size, size, generator=g) * 2 - 1 for k in ("A", "B")}


@pytest.mark.parametrize("norm,gan_mode", [("instance", "lsgan"), ("none", "vanilla"), ("instance", "wgangp")])
def test_pix2pix_batched_d_equals_two_passes(norm, gan_mode):
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"model.norm": norm, "gan_mode": gan_mode, "amp": "off",
                                                     # lr 0: the G phase then sees the same D in both runs
                                                     "optim.lr": 0.0})
    runs = []
    for batched in (True, False):
        torch.manual_seed(0)
        fw = build_framework(cfg)
        assert fw.batch_d
        fw.batch_d = batched
        grads = {}
        for name, net in fw.nets.items():  # D's gradients as the D update sees them
            for pn, p in net.named_parameters():
                p.register_hook(lambda g, k=f"{name}.{pn}": grads.setdefault(k, g.clone()))
        torch.manual_seed(1)
        losses = fw.train_step(_batch())
        runs.append((losses, grads))
    # (with lr > 0 the G-phase numbers are not comparable: Adam's first step is ~lr * sign(grad),
    # which turns rounding-level differences of near-zero D gradients into lr-sized weight ones)
    (la, ga), (lb, gb) = runs
    assert la.keys() == lb.keys()
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and {k[:2] for k in ga} == {"D.", "G."}
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6)


def test_batch_norm_or_dropout_keeps_two_passes():
    fw = build_framework(apply_overrides(preset("tiny", "pix2pix"), {"model.d_norm": "batch"}))  # the D's own norm
    assert not fw.batch_d
    assert not per_sample_net(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Dropout(0.5)))


def test_scheduled_lr_matches_lambdalr_without_warning():
    ps = [torch.nn.Parameter(torch.zeros(1))]
    ref_opt, opt = torch.optim.Adam(ps, lr=2e-4), torch.optim.Adam(ps, lr=2e-4)
    fn = linear_decay(3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.optim.lr_scheduler.LambdaLR(ref_opt, fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = ScheduledLR(opt, fn)
        for _ in range(9):   # stepped before any optimizer.step(): no warning now
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref.step()
            ours.step()
            assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    again = ScheduledLR(torch.optim.Adam(ps, lr=2e-4), fn)
    again.load_state_dict(ref.state_dict())   # a LambdaLR checkpoint resumes
    assert again.opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


def test_adam_kernel_and_compile_mode_checked():
    fw = build_framework(preset("tiny", "pix2pix"))
    assert all(o.defaults["foreach"] for o in fw.opts.values())   # CPU: foreach
    with pytest.raises(ValueError, match="compile_mode"):
        build_framework(apply_overrides(preset("tiny", "pix2pix"), {"compile_mode": "fastest"}))


def test_training_modules_import_without_yaml_nibabel():
    # (tqdm is not checked: torch.hub imports it itself when installed; gan_core imports it
    # only for a progress bar)
    code = ("import sys\n"
            "import gan_core.frameworks, gan_core.presets, gan_core.engine, gan_core.data.batches\n"
            "from gan_core.presets import preset\n"
            "from gan_core.frameworks import build_framework\n"
            "build_framework(preset('tiny', 'cyclegan')); build_framework(preset('tiny', 'pix2pix'))\n"
            "bad = {'yaml', 'nibabel', 'ray', 'mlflow', 'SimpleITK'} & {m.split('.')[0] for m in sys.modules}\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
