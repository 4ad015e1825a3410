"""Per-step cost of the Ray Train + MLflow wrapper: the bare ``gan_core.engine.train`` loop vs the
same run through ``components.raytrain.fit`` (1 worker, MLflow logging to a local sqlite store,
checkpoints reported to Ray, sample figures at checkpoints), steps/s of the training loop itself
(``TrainResult.seconds``: Ray/worker start-up excluded, every report/log/checkpoint included).

Needs ray + mlflow (this is not part of the GPU check). Runs bare, wrapped, bare, wrapped ...
(``--repeats``) so that load drift on a shared machine hits both alike; JSON lines out.

    OMP_NUM_THREADS=1 python bench/wrapper_overhead.py --steps 600 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import write_shards  # noqa: E402

from gan_core.engine import train  # noqa: E402
from gan_core.presets import apply_overrides, preset, with_total_steps  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="pix2pix")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--log-every-s", type=float, default=0.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from components import mlflow_utils as mlu
    from components.raytrain import fit, ray_session, ray_storage, worker_config

    torch.set_num_threads(1)  # what a 1-CPU Ray worker gets
    cfg = apply_overrides(with_total_steps(preset("demo", args.framework), args.steps),
                          {"log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
                           "log_every_s": args.log_every_s})
    rows = []
    with tempfile.TemporaryDirectory(prefix="medgan-wrap-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        write_shards(data / "train", n_slices=256, inplane=48, subjects=8)
        write_shards(data / "val", n_slices=32, inplane=48, subjects=2, seed=1)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        with ray_session():
            for r in range(args.repeats):
                for mode in ("bare", "ray+mlflow"):
                    out = tmp / f"{mode}{r}"
                    if mode == "bare":
                        res = train(cfg, data, out, progress=False)
                        steps, secs = res.steps, res.seconds
                    else:
                        run_id = mlu.create_run(uri, "wrapper-bench", run_name=f"r{r}")
                        spec = worker_config(cfg, {"train": str(data / "train"), "val": str(data / "val")},
                                             tracking_uri=uri, run_id=run_id, export_uri=str(out / "export"))
                        rv = fit(spec, name=f"wrap{r}", store=ray_storage(str(out / "ray")),
                                 num_workers=1).return_value
                        steps, secs = rv["steps"], rv["seconds"]
                    row = {"mode": mode, "repeat": r, "framework": args.framework, "steps": steps,
                           "seconds": round(secs, 2), "steps_per_s": round(steps / secs, 2),
                           "log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
                           "log_every_s": args.log_every_s, "torch": torch.__version__,
                           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    bare = statistics.mean(r["steps_per_s"] for r in rows if r["mode"] == "bare")
    wrapped = statistics.mean(r["steps_per_s"] for r in rows if r["mode"] != "bare")
    summary = {"mode": "summary", "bare_steps_per_s": round(bare, 2), "wrapped_steps_per_s": round(wrapped, 2),
               "overhead_pct": round(100 * (1 - wrapped / bare), 1)}
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows + [summary])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
