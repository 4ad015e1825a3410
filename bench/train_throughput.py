"""Training throughput of pix2pix and CycleGAN: the published recipe vs our fastest settings.

Needs only torch + gan_core (runs on a bare GPU box). For each framework and each setting it runs
warm-up steps, then times ``--steps`` full ``train_step`` calls (G and D updates, losses, pools)
on synthetic batches already on the device, and reports images/s, peak memory and model FLOPs
utilisation (MFU = FLOPs of one step counted by ``torch.utils.flop_counter`` x steps/s / peak).

    python bench/train_throughput.py                       # 256 px, CUDA if present
    python bench/train_throughput.py --size 64 --steps 5   # a CPU smoke run
    python bench/train_throughput.py --json out.json

Settings compared in one run:
  published: fp32, batch 1, eager, contiguous (Isola et al. / Zhu et al. recipes)
  fast:      bf16 autocast, channels_last, torch.compile, batch --fast-batch (CUDA only for bf16/compile)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from gan_core.presets import apply_overrides, preset
from gan_core.frameworks import build_framework

# dense peak TFLOP/s by (device substring, dtype): H100 SXM datasheet values
PEAKS = {("H100", "bf16"): 989.0, ("H100", "fp32"): 67.0, ("H200", "bf16"): 989.0, ("H200", "fp32"): 67.0,
         ("A100", "bf16"): 312.0, ("A100", "fp32"): 19.5}


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (key, dt_), val in PEAKS.items():
        if key in name and dt_ == dtype:
            return val
    return None


def make_cfg(framework: str, size: int, batch: int, fast: bool, device: torch.device):
    cfg = preset("full", framework)
    over = {"data.image_size": size, "data.batch_size": batch, "seed": 0}
    if fast:
        over.update({"amp": "bf16" if device.type == "cuda" else "off", "channels_last": True,
                     "compile": device.type == "cuda"})
    else:
        over.update({"amp": "off", "channels_last": False, "compile": False})
    if framework == "pix2pix" and size < 256:
        over["model.num_downs"] = max(1, size.bit_length() - 1)
    return apply_overrides(cfg, over)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(framework: str, size: int, batch: int, fast: bool, steps: int, warmup: int,
              device: torch.device, peak_override: float | None) -> dict:
    cfg = make_cfg(framework, size, batch, fast, device)
    fw = build_framework(cfg, device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    batch_t = {k: (torch.rand(batch, 1, size, size, generator=g) * 2 - 1).to(device) for k in ("A", "B")}
    batch_t["mask"] = torch.ones(batch, 1, size, size, device=device)
    # FLOPs of one eager step (counted before compile kicks in: same math)
    with FlopCounterMode(display=False) as fc:
        probe = build_framework(apply_overrides(cfg, {"compile": False}), device=device)
        probe.train_step(batch_t)
    flops = fc.get_total_flops()
    del probe
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t_compile = time.perf_counter()
    for _ in range(warmup):
        fw.train_step(batch_t)
    sync(device)
    warm_s = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for _ in range(steps):
        fw.train_step(batch_t)
    sync(device)
    dt_s = time.perf_counter() - t0
    ips = steps * batch / dt_s
    dtype = "bf16" if cfg.amp == "bf16" else "fp32"
    peak = peak_tflops(device, dtype, peak_override)
    achieved = flops * steps / dt_s / 1e12
    return {
        "framework": framework, "setting": "fast" if fast else "published", "size": size,
        "batch": batch, "amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
        "images_per_s": round(ips, 2), "step_ms": round(1000 * dt_s / steps, 2),
        "gflop_per_step": round(flops / 1e9, 1), "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / peak, 4) if peak else None, "peak_tflops_assumed": peak,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "warmup_s": round(warm_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frameworks", default="cyclegan,pix2pix")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--fast-batch", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the assumed peak")
    p.add_argument("--only", choices=("published", "fast"), default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # the published recipe is true fp32
        torch.backends.cudnn.allow_tf32 = False
    rows = []
    for fw in args.frameworks.split(","):
        for fast in (False, True):
            if args.only and args.only != ("fast" if fast else "published"):
                continue
            r = bench_one(fw, args.size, args.fast_batch if fast else 1, fast, args.steps, args.warmup,
                          device, args.peak_tflops)
            rows.append(r)
            print(json.dumps(r), flush=True)
    meta = {"date": dt.date.today().isoformat(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads()}
    print(f"\n{meta}")
    print(f"{'framework':<10} {'setting':<10} {'batch':>5} {'img/s':>9} {'GFLOP/step':>11} {'MFU':>7} {'peak GiB':>9}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = r["peak_mem_gib"] if r["peak_mem_gib"] is not None else "n/a"
        print(f"{r['framework']:<10} {r['setting']:<10} {r['batch']:>5} {r['images_per_s']:>9.2f} "
              f"{r['gflop_per_step']:>11.1f} {mfu:>7} {mem!s:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
