"""Training throughput: the published recipes vs our fastest settings, on device batches and fed
from real shards through our loader, in one run; plus a loader-only mode.

Needs only torch + numpy + gan_core (no yaml, nibabel, ray or mlflow: the shards are written
here with numpy, in the layout ``gan_core.data.shards.pack_shards`` writes). One JSON object per
line on stdout (and in ``--out``); a summary table on stderr.

    python bench/train_throughput.py                                 # the GPU comparison, 256 px
    python bench/train_throughput.py --size 32 --fast-batch cyclegan:4,pix2pix:8   # a CPU run
    python bench/train_throughput.py --loader-only --workers 0,1,2   # slices/s, per CPU-second

Settings, for each framework:

- ``published``: the recipe as its authors ran it: the ``full`` preset (pix2pix: U-Net-256 +
  70x70 PatchGAN, batch norm, dropout; CycleGAN: ResNet-9, image pool 50, identity 0.5), fp32,
  batch 1, eager, contiguous, PyTorch's default TF32 flags (not touched here);
- ``fast``: the same networks and losses with bf16 autocast (CUDA), channels_last,
  ``torch.compile`` (``--compile-mode``; CUDA), batch ``--fast-batch``, fused Adam (CUDA).

Feeds: ``device`` (one synthetic batch already on the device, reused), ``shards`` (the shards
below streamed by ``SliceBatches`` + ``prefetch`` with ``--workers`` threads, exactly as
``gan_core.engine.train`` reads them), ``resident`` (``fast`` only: ``data.device_resident``).

Timing: warm-up steps (compile happens there), then as many steps as fit in ``--window``
seconds (>= 2), with a device synchronisation before the clock starts and before it stops.
FLOPs per image are counted once per framework (``torch.utils.flop_counter``, one eager fp32
step at batch 2, divided by 2: the same count for every setting); MFU = FLOPs/image x img/s
over ONE stated peak (``--peak-tflops``; by default the device's dense bf16 peak from
:data:`PEAKS`, so both settings are measured against the same number).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gan_core.data.batches import SliceBatches, prefetch
from gan_core.data.shards import InfiniteSampler, Shards, SliceDataset
from gan_core.frameworks import build_framework
from gan_core.presets import apply_overrides, preset
from gan_core.tasks import build_task

#: dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets (SXM parts)
PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


# ----------------------------------------------------------------------------- shards with numpy
def write_shards(out: Path, *, n_slices: int, inplane: int, subjects: int = 8, seed: int = 0) -> Path:
    """A shard folder (mr/ct float32 in [-1, 1], mask uint8, index.json) of smooth random
    phantoms, written with numpy only; the same layout and index fields training reads."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    h = w = inplane
    mr = np.lib.format.open_memmap(out / "mr.npy", "w+", np.float32, (n_slices, h, w))
    ct = np.lib.format.open_memmap(out / "ct.npy", "w+", np.float32, (n_slices, h, w))
    mk = np.lib.format.open_memmap(out / "mask.npy", "w+", np.uint8, (n_slices, h, w))
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    body = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.4 ** 2
    for z0 in range(0, n_slices, 64):
        z1 = min(n_slices, z0 + 64)
        phase = rng.uniform(0, 6.28, (z1 - z0, 1, 1))
        base = np.sin(8 * yy[None] + phase) * np.cos(6 * xx[None] - phase)
        mr[z0:z1] = np.where(body, 0.5 * base, -1.0).astype(np.float32)
        ct[z0:z1] = np.where(body, 0.3 * base - 0.2, -1.0).astype(np.float32)
        mk[z0:z1] = body
    for a in (mr, ct, mk):
        a.flush()
    depth = n_slices // subjects
    subs = [{"id": f"s{i}", "offset": i * depth, "depth": depth if i < subjects - 1 else n_slices - i * depth,
             "shape": [h, w, depth], "pad": [0, 0], "affine": np.eye(4).tolist(), "spacing": [1.0] * 3,
             "mr_percentiles": [0.0, 1.0], "source": {}} for i in range(subjects)]
    (out / "index.json").write_text(json.dumps({"version": 1, "n_slices": n_slices, "inplane": [h, w],
                                                "arrays": ["mr", "ct", "mask"], "subjects": subs}))
    return out


# ----------------------------------------------------------------------------- settings
def make_cfg(framework: str, size: int, batch: int, fast: bool, device: torch.device, compile_mode: str):
    cfg = preset("full", framework)
    over = {"data.image_size": size, "data.batch_size": batch, "seed": 0, "data.min_body_fraction": 0.0}
    cuda = device.type == "cuda"
    if fast:
        over.update({"amp": "bf16" if cuda else "off", "channels_last": True, "compile": cuda,
                     "compile_mode": compile_mode})
    else:
        over.update({"amp": "off", "channels_last": False, "compile": False})
    if framework == "pix2pix" and size < 256:
        over["model.num_downs"] = max(1, size.bit_length() - 1)
    return apply_overrides(cfg, over)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(framework: str, size: int, device: torch.device) -> float:
    """FLOPs of one training step per image: one eager fp32 step at batch 2, counted."""
    cfg = make_cfg(framework, size, 2, False, device, "default")
    fw = build_framework(cfg, device=device)
    batch = synthetic_batch(cfg, 2, size, device)
    with FlopCounterMode(display=False) as fc:
        fw.train_step(batch)
    return fc.get_total_flops() / 2


def synthetic_batch(cfg, n: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"A": (torch.rand(n, cfg.model.in_channels, size, size, generator=g) * 2 - 1).to(device),
            "B": (torch.rand(n, 1, size, size, generator=g) * 2 - 1).to(device)}


def shard_feed(fw, cfg, shard_dir: Path, device: torch.device, workers: int, resident: bool):
    sb = SliceBatches(Shards(shard_dir), image_size=cfg.data.image_size, flip=True, seed=0,
                      task=build_task(cfg.task), keys=fw.batch_keys(), device=device, resident=resident)
    sampler = InfiniteSampler(len(sb), paired=fw.paired, seed=0)
    return prefetch(sb, sampler.batches(cfg.data.batch_size), batch_size=cfg.data.batch_size,
                    workers=workers), sb


def timed(step, device: torch.device, warmup: int, window: float) -> tuple[int, float, float]:
    """(steps, seconds, warm-up seconds): ``warmup`` steps, then steps until ``window`` s passed."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n >= 2 and time.perf_counter() - t0 >= window:
            sync(device)  # the queue drains inside the window it was filled in
            el = time.perf_counter() - t0
            if el >= window:
                return n, el, warm


def emit(row: dict, out: str | None) -> None:
    """One JSON line on stdout and, at once, in ``out`` (a timeout keeps what was measured)."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def bench_framework(framework: str, args, device: torch.device, shard_dir: Path, peak: float | None,
                    meta: dict) -> list[dict]:
    rows = []
    fpi = flops_per_image(framework, args.size, device)
    batches = dict(kv.split(":") for kv in args.fast_batch.split(","))
    for setting in ("published", "fast"):
        if args.only and setting != args.only:
            continue
        fast = setting == "fast"
        bs = int(batches.get(framework, 32)) if fast else 1
        cfg = make_cfg(framework, args.size, bs, fast, device, args.compile_mode)
        fw = build_framework(cfg, device=device)
        batched = not args.separate_calls
        if not batched:  # the separate same-network calls (identical results, more kernels)
            for flag in ("batch_g", "batch_d"):
                if hasattr(fw, flag):
                    setattr(fw, flag, False)
        feeds = ["device", "shards"] + (["resident"] if fast else [])
        for feed in feeds:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            sb = None
            if feed == "device":
                b = synthetic_batch(cfg, bs, args.size, device)
                step = lambda: fw.train_step(b)  # noqa: E731
            else:
                it, sb = shard_feed(fw, cfg, shard_dir, device, args.workers_train, feed == "resident")
                step = lambda: fw.train_step(next(it))  # noqa: E731
            n, el, warm = timed(step, device, args.warmup, args.window)
            if feed != "device":
                it.close()
            ips = n * bs / el
            achieved = fpi * ips / 1e12
            row = {"kind": "train", "framework": framework, "setting": setting, "feed": feed,
                   "size": args.size, "batch": bs, "amp": cfg.amp, "channels_last": cfg.channels_last,
                   "compile": cfg.compile_mode if cfg.compile else "none", "batched_calls": batched,
                   "loader_threads": args.workers_train if feed == "shards" else 0,
                   "images_per_s": round(ips, 2), "step_ms": round(1000 * el / n, 2), "steps_timed": n,
                   "window_s": round(el, 2), "warmup_s": round(warm, 1),
                   "gflop_per_image": round(fpi / 1e9, 2), "achieved_tflops": round(achieved, 4),
                   "peak_tflops": peak, "mfu": round(achieved / peak, 5) if peak else None,
                   "peak_mem_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                                    if device.type == "cuda" else None),
                   "resident_gib": round(sb.resident_bytes() / 2**30, 3) if sb is not None else 0.0,
                   **meta}
            rows.append(row)
            emit(row, args.out)
        fw = None  # free the networks before the next setting builds its own
    return rows


# ----------------------------------------------------------------------------- loader only
def _loader_row(path: str, threads: int, bs: int, n: int, el: float, cpu: float, main_cpu: float,
                args, meta: dict) -> dict:
    """One loader JSON row: slices/s in wall time and per CPU-second (all threads of this process
    over the same window), how the CPU time splits between the consumer thread and the readers,
    and the load average the run shared the machine with."""
    slices = n * bs
    return {"kind": "loader", "path": path, "threads": threads, "crop": args.crop,
            "inplane": args.inplane, "batch": bs, "slices_per_s": round(slices / el, 1),
            "slices_per_s_per_core": round(slices / el / max(1, threads), 1),
            "slices_per_cpu_s": round(slices / max(cpu, 1e-9), 1),
            "cpu_s_per_slice_us": round(1e6 * cpu / slices, 1),
            "consumer_cpu_share": round(main_cpu / max(cpu, 1e-9), 3),
            "cpu_cores_busy": round(cpu / el, 2), "window_s": round(el, 2),
            "loadavg_1m": round(os.getloadavg()[0], 2), **meta}


def _timed_cpu(step, device: torch.device, warmup: int, window: float):
    """:func:`timed` plus the process's and this thread's CPU seconds over the timed window."""
    for _ in range(warmup):
        step()
    sync(device)
    cpu0, main0 = time.process_time(), time.thread_time()
    n, el, _ = timed(step, device, 0, window)
    return n, el, time.process_time() - cpu0, time.thread_time() - main0


def bench_loader(args, device: torch.device, shard_dir: Path, meta: dict) -> list[dict]:
    """Slices/s of the training data path alone (host crop-window copy + transfer + the device
    side), per reader-thread setting (0: in line, in the consumer's thread); and the per-sample
    ``SliceDataset`` path for reference. CPU time covers only the timed window (after warm-up)."""
    rows = []
    task = build_task(preset("full", "pix2pix").task)
    bs = args.loader_batch
    for workers in (int(w) for w in args.workers.split(",")):
        sb = SliceBatches(Shards(shard_dir), image_size=args.crop, flip=True, seed=0, task=task,
                          device=device)
        it = prefetch(sb, InfiniteSampler(len(sb), paired=True, seed=0).batches(bs), batch_size=bs,
                      workers=workers)
        n, el, cpu, main_cpu = _timed_cpu(lambda: next(it), device, 3, args.window)
        it.close()
        row = _loader_row("SliceBatches", workers, bs, n, el, cpu, main_cpu, args, meta)
        rows.append(row)
        emit(row, args.out)
    if args.no_reference:
        return rows
    # reference: the per-sample path (one SliceDataset sample at a time, stacked)
    ds = SliceDataset(shard_dir, image_size=args.crop, flip=True, seed=0, task=task)
    keys = iter(InfiniteSampler(len(ds), paired=True, seed=0))

    def one_batch():
        batch = [ds[next(keys)] for _ in range(bs)]
        return {k: torch.stack([s[k] for s in batch]).to(device) for k in batch[0]}

    n, el, cpu, main_cpu = _timed_cpu(one_batch, device, 1, args.window)
    row = _loader_row("SliceDataset per sample (reference)", 0, bs, n, el, cpu, main_cpu, args, meta)
    rows.append(row)
    emit(row, args.out)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frameworks", default="cyclegan,pix2pix")
    p.add_argument("--size", type=int, default=256, help="training crop (px)")
    p.add_argument("--fast-batch", default="cyclegan:32,pix2pix:64", help="framework:batch,...")
    p.add_argument("--compile-mode", default="default",
                   help="fast setting's torch.compile mode (default | reduce-overhead | max-autotune)")
    p.add_argument("--only", choices=("published", "fast"), default=None)
    p.add_argument("--warmup", type=int, default=5, help="steps before each timing window")
    p.add_argument("--window", type=float, default=5.0, help="seconds per timing window (>= 5 to publish)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="the one peak MFU is measured against")
    p.add_argument("--shards", default=None, help="an existing shard folder (default: write one)")
    p.add_argument("--inplane", type=int, default=None, help="in-plane size of the written shards")
    p.add_argument("--n-slices", type=int, default=2048)
    p.add_argument("--workers-train", type=int, default=2, help="loader threads when fed from shards")
    p.add_argument("--separate-calls", action="store_true",
                   help="force the unbatched same-network calls (fw.batch_g / batch_d = False)")
    p.add_argument("--loader-only", action="store_true", help="measure the data path alone")
    p.add_argument("--loader-also", action="store_true", help="the loader too, after training")
    p.add_argument("--workers", default="0,2", help="loader-only: thread counts to try")
    p.add_argument("--crop", type=int, default=256, help="loader-only: crop (px)")
    p.add_argument("--loader-batch", type=int, default=64)
    p.add_argument("--no-reference", action="store_true",
                   help="loader-only: skip the per-sample SliceDataset reference row")
    p.add_argument("--out", default=None, help="also append the JSON lines here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # TF32 flags: PyTorch's defaults, untouched
    crop = args.crop if args.loader_only else args.size
    args.inplane = args.inplane or (crop + 32 if crop >= 128 else crop + 8)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAKS.items() if k in name), None)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
            "torch_threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medgan-bench-") as tmp:
        shard_dir = Path(args.shards) if args.shards else write_shards(
            Path(tmp) / "train", n_slices=args.n_slices, inplane=args.inplane)
        if args.loader_only:
            rows += bench_loader(args, device, shard_dir, meta)
        else:
            for fw in args.frameworks.split(","):
                rows += bench_framework(fw, args, device, shard_dir, peak, meta)
            if args.loader_also:
                args.crop = args.size
                rows += bench_loader(args, device, shard_dir, meta)
    err = sys.stderr
    print(f"\n{meta['device']} | torch {meta['torch']} | {meta['date']} | peak for MFU: "
          f"{peak if peak else 'n/a'} TFLOP/s | max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", file=err)
    for r in rows:
        if r["kind"] == "train":
            mfu = f"{100 * r['mfu']:.2f}%" if r["mfu"] is not None else "n/a"
            print(f"{r['framework']:<9} {r['setting']:<10} {r['feed']:<9} b={r['batch']:<3} "
                  f"{r['images_per_s']:>9.2f} img/s  {r['gflop_per_image']:>8.1f} GFLOP/img  MFU {mfu:>7}"
                  f"  mem {r['peak_mem_gib']} GiB", file=err)
        else:
            print(f"loader {r['path']:<38} threads={r['threads']} {r['slices_per_s']:>9.1f} slices/s "
                  f"({r['slices_per_s_per_core']:.1f}/core; {r['cpu_s_per_slice_us']:.0f} us CPU/slice = "
                  f"{r['slices_per_cpu_s']:.0f} slices per CPU-second; {r['cpu_cores_busy']:.2f} cores "
                  f"busy; load {r['loadavg_1m']})", file=err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
