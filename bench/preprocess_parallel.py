"""Speed-up of the preprocess step's per-subject work as Ray tasks on a loopback Ray cluster.

    python bench/preprocess_parallel.py --subjects 8 --nodes 2 --cpus 1 --json out.json

Makes a phantom ingest output (``--subjects`` subjects, ``--shape`` voxels, a planted rigid
MR misalignment so the registration has work to do), then runs ``run_preprocess`` with
``register=rigid`` twice on the same input: in process (subjects one after another), and with
``ray_address`` pointing at a fresh loopback cluster of ``--nodes`` nodes x ``--cpus`` CPUs
(``tests/ray_cluster.py``; one 1-CPU task per subject), twice: "cold" (Ray starts a worker
process per CPU, each importing SimpleITK & co.) and "warm" (workers reused). Reports the ``subjects_s`` timing of each
run (the per-subject stage the Ray path parallelises; packing is the same in both), the total,
the speed-up, and checks that both outputs are identical (manifests' subject records, shard
checksums). The cluster start is not counted (a real cluster is already running).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.ingest import run_ingest  # noqa: E402
from components.preprocess import run_preprocess  # noqa: E402
from tests.ray_cluster import ray_cluster  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--shape", default="96,96,48", help="phantom voxels X,Y,Z")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=1, help="CPUs per node")
    ap.add_argument("--json", help="write the numbers here")
    a = ap.parse_args(argv)
    shape = tuple(int(v) for v in a.shape.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-prep-") as d:
        raw = f"{d}/raw"
        run_ingest("phantom", raw, subjects=a.subjects, seed=0, shape=shape,
                   spacing=(3.0, 3.0, 5.0), misalign_mm=6.0)
        kw = dict(spacing=None, register="rigid", seed=0)
        t = time.perf_counter()
        seq = run_preprocess(raw, f"{d}/seq", **kw)
        seq_total = time.perf_counter() - t
        runs = []
        with ray_cluster(nodes=a.nodes, num_cpus=a.cpus, dashboard=False) as c:
            for i in range(2):  # cold: Ray starts its worker processes; warm: they are reused
                t = time.perf_counter()
                par = run_preprocess(raw, f"{d}/par{i}", ray_address=c.address, **kw)
                runs.append((par, time.perf_counter() - t))
    for m in (seq, *(r[0] for r in runs)):  # wall-clock seconds: the one field that differs
        for rec in m["subjects"]:
            rec["registration"].pop("seconds", None)
    same = all(par["subjects"] == seq["subjects"] and par["outputs"] == seq["outputs"]
               and par["failed"] == seq["failed"] == [] for par, _ in runs)
    out = {"subjects": a.subjects, "shape": list(shape), "nodes": a.nodes, "cpus_per_node": a.cpus,
           "machine_cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "platform": platform.platform(),
           "in_process": {"subjects_s": seq["timings"]["subjects_s"], "total_s": round(seq_total, 2)},
           **{f"ray_{kind}": {"subjects_s": par["timings"]["subjects_s"], "total_s": round(total, 2),
                              "speedup_subjects": round(seq["timings"]["subjects_s"]
                                                        / par["timings"]["subjects_s"], 2),
                              "speedup_total": round(seq_total / total, 2)}
              for kind, (par, total) in zip(("cold", "warm"), runs)},
           "identical_outputs": same}
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    if not same:
        raise SystemExit("outputs differ between the in-process and the Ray run")
    return out


if __name__ == "__main__":
    main()
