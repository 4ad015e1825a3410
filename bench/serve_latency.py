"""Latency of the served synthetic-CT model: one MR NIfTI (default 256 x 256 x 150) in, the sCT
NIfTI out, over HTTP through a real ``mlflow models serve`` (and in-process, to separate the
network/JSON/base64 cost from the model's).

The model is the preset's architecture with its initial weights (latency does not depend on
the weights): ``demo`` is what ``make demo`` trains and registers on a CPU (a full-resolution
ConvNet), ``full`` the published 256-px U-Net. It is logged as medgan's pyfunc into a throwaway
sqlite registry, aliased ``champion`` and served with ``--env-manager local`` on 127.0.0.1.

    python bench/serve_latency.py                         # demo preset, 256x256x150, 3 requests
    python bench/serve_latency.py --preset full --repeats 2 --json out.json

Needs the pipeline extra (mlflow). Run from the repository root (it uses tests/model_server.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo", choices=("demo", "full", "tiny"))
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 150), metavar=("X", "Y", "Z"))
    ap.add_argument("--repeats", type=int, default=3, help="timed requests (after one warm-up)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                    help="torch threads of the server (and of the in-process run)")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from components.pyfunc_model import SyntheticCTModel, encode_nifti
    from gan_core.data.nifti import save_volume
    from gan_core.data.phantom import generate_subject
    from gan_core.engine.checkpoint import save_model
    from gan_core.frameworks import build_framework
    from gan_core.presets import preset
    from tests.model_server import ModelServer, post_nifti, register_champion

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="medgan-serve-bench-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        save_model(build_framework(preset(a.preset, "pix2pix")), root / "model.pt")
        s = generate_subject(0, shape=tuple(a.shape), spacing=(1.0, 1.0, 1.5), lesion_prevalence=0.0)
        mr = save_volume(root / "mr.nii.gz", s.mr, affine=s.affine, dtype=np.float32)
        payload = mr.read_bytes()

        local = SyntheticCTModel.from_file(root / "model.pt", device="cpu")
        df = pd.DataFrame({"mr_nifti_b64": [encode_nifti(mr)]})
        local.predict(None, df)  # warm-up
        inproc = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            local.predict(None, df)
            inproc.append(time.perf_counter() - t0)

        uri = f"sqlite:///{root / 'mlflow.db'}"
        register_champion(root / "model.pt", uri, "medgan-sct-bench", root / "artifacts")
        env = {"OMP_NUM_THREADS": str(a.threads), "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "1200"}
        with ModelServer("models:/medgan-sct-bench@champion", tracking_uri=uri, log_dir=root, env=env,
                         startup_timeout=600) as url:
            status, body = post_nifti(url, payload, timeout=1200)  # warm-up
            assert status == 200, body
            http = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                status, body = post_nifti(url, payload, timeout=1200)
                http.append(time.perf_counter() - t0)
                assert status == 200, body
    result = {
        "bench": "serve_latency", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}",
        "preset": a.preset, "shape": list(a.shape), "torch_threads": a.threads,
        "payload_mb": round(len(payload) / 1e6, 2),
        "http_s": {"median": round(statistics.median(http), 2), "all": [round(x, 2) for x in http]},
        "in_process_s": {"median": round(statistics.median(inproc), 2), "all": [round(x, 2) for x in inproc]},
    }
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
