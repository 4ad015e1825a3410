import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_core.engine import load_model, train
from gan_core.presets import apply_overrides, preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(fw):
    return {f"{k}.{n}": p.detach().clone() for k, net in fw.networks().items()
            for n, p in net.named_parameters()}


@pytest.mark.parametrize("name,task", [("pix2pix", "mr2ct"), ("cyclegan", "mr2ct"), ("unit", "mr2ct"),
                                       ("dcgan", "synth"), ("lapgan", "synth"), ("dcgan", "labels2ct"),
                                       ("pix2pix", "kspace")])
def test_exact_resume(tiny_shards, tmp_path, name, task):
    cfg = apply_overrides(preset("tiny", name, task), {"checkpoint_every": 2, "log_every": 2})
    full = train(cfg, tiny_shards, tmp_path / "full", progress=False)
    part = train(cfg, tiny_shards, tmp_path / "part", max_steps=4, progress=False)
    assert part.steps == 4 and not (tmp_path / "part" / "model.pt").exists()
    rest = train(cfg, tiny_shards, tmp_path / "part", progress=False)   # resumes from checkpoint.pt
    assert rest.steps == cfg.total_steps
    a, b = load_model(full.model_path), load_model(rest.model_path)
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"{name}: {k} differs after resume"
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert ca["step"] == cb["step"] == cfg.total_steps
    for g in ca["framework"]["opts"]:
        sa, sb = ca["framework"]["opts"][g]["state"], cb["framework"]["opts"][g]["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    hist = [json.loads(line) for line in (tmp_path / "part" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [2, 4, 6, 8]


def test_validation_reports_hu(tiny_shards, tmp_path):
    res = train(preset("tiny", "pix2pix"), tiny_shards, tmp_path / "r", progress=False)
    assert res.val_mae is not None and 0 < res.val_mae < 3000
    assert res.model_path.exists()


def _ddp_worker(rank, world, shards, out, port, name):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = preset("tiny", name)
        ddp = lambda m: torch.nn.parallel.DistributedDataParallel(m)  # noqa: E731
        seen = []
        train(cfg, shards, out, rank=rank, world_size=world, wrap=ddp, progress=False,
              report=lambda step, metrics, ck: seen.append(step))
        fw = load_model(out / "model.pt") if rank == 0 else None
        # every rank ends with the same weights (DDP kept them in sync)
        from gan_core.frameworks import build_framework  # noqa: F401
        dist.barrier()
        torch.save(seen, out / f"seen_{rank}.pt")
        del fw
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan"])
def test_ddp_two_workers_gloo(tiny_shards, tmp_path, name):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, tiny_shards, tmp_path, port, name), nprocs=2, join=True)
    assert (tmp_path / "model.pt").exists()
    s0, s1 = torch.load(tmp_path / "seen_0.pt"), torch.load(tmp_path / "seen_1.pt")
    assert s0 == s1 == [2, 4, 6, 8]


def test_3d_patches_train_and_translate_a_volume(tiny_shards, tmp_path):
    import numpy as np

    from gan_core.data.shards import Shards
    from gan_core.engine import translate_array

    cfg = apply_overrides(preset("tiny", "pix2pix"), {"model.spatial_dims": 3, "data.patch_depth": 8,
                                                      "data.image_size": 24, "model.d_layers": 1})
    res = train(cfg, tiny_shards, tmp_path / "r3d", progress=False)
    fw = load_model(res.model_path)
    assert fw.cfg.model.spatial_dims == 3
    sh = Shards(tiny_shards / "test")
    slab = sh.subject_slab(0)
    mr = np.moveaxis(slab["mr"], 0, 2) * 100 + 200  # any scanner scale: translate renormalises
    mask = np.moveaxis(slab["mask"], 0, 2)
    hu = translate_array(fw, mr, mask)
    assert hu.shape == mr.shape and np.isfinite(hu).all()
    assert (hu[mask == 0] == -1000).all() and hu[mask > 0].std() > 0


def test_report_on_a_time_interval_checkpoints_and_end(tiny_shards, tmp_path):
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"log_every": 1, "checkpoint_every": 4,
                                                      "log_every_s": 1e9, "data.num_workers": 2})
    seen = []
    train(cfg, tiny_shards, tmp_path / "r", progress=False,
          report=lambda step, metrics, ck: seen.append((step, ck is not None, "G" in metrics)))
    assert seen == [(4, True, True), (8, True, True)]        # interval never passed: ckpts + end
    hist = [json.loads(line)["step"] for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert hist == list(range(1, 9))                           # losses still read every log step
