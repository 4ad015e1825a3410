"""Per-step cost of the Ray Train + MLflow wrapper: the bare ``gan_core.engine.train`` loop vs the
same run through ``components.raytrain.fit`` (1 worker, MLflow to a local sqlite store, checkpoints
reported to Ray, sample figures), measured so that a loaded machine hits both alike.

ONE Ray session, ONE process pair, run side by side but never at the same time: a bare process
(``gan_core.engine.train``, no report hook) and the Ray Train worker (the real
``train_loop_per_worker``) each run the same config; both have their framework's ``train_step``
wrapped by a pacer that stops every ``--segment-steps`` steps, tells this coordinator how long
the segment took (wall and process CPU time) and waits for its turn. The coordinator lets them
run alternate segments (bare, wrapped / wrapped, bare / ...), so every pair of segments shares
the machine's load of that moment. Each segment holds the same events (``--log-every`` and
``--checkpoint-every`` divide it); sample figures come every ``--sample-every-s`` seconds.

Out (JSON lines): one row per segment, then a summary: the median over pairs of
wrapped/bare steps/s with a bootstrap 95% CI, the same for process CPU time per step (CPU time
of the whole process over a full cycle, so the wrapper's background threads count), the ratio
of total times, the measured cost of each ``ray.train.report`` call, load averages, versions.
The first ``--warmup-pairs`` pairs are run but not counted.

    OMP_NUM_THREADS=1 python bench/wrapper_overhead.py            # ~4 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROLES = ("bare", "ray+mlflow")
#: Seconds the coordinator waits for one segment before it gives up (a process died or hung).
SEGMENT_TIMEOUT_S = 600.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="pix2pix")
    p.add_argument("--preset", default="demo")
    p.add_argument("--segment-steps", type=int, default=500, help="steps per measured segment")
    p.add_argument("--pairs", type=int, default=5, help="measured (bare, wrapped) segment pairs")
    p.add_argument("--warmup-pairs", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every-s", type=float, default=10.0)
    p.add_argument("--sample-every-s", type=float, default=300.0)
    p.add_argument("--bootstrap", type=int, default=5000, help="bootstrap resamples for the CIs")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    # internal: the bare process started by the coordinator
    p.add_argument("--role", default="coordinator", choices=("coordinator", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--socket", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return p


def _config(args: argparse.Namespace) -> Any:
    from gan_core.presets import apply_overrides, preset, with_total_steps

    k = args.segment_steps
    for name in ("log_every", "checkpoint_every"):
        if k % getattr(args, name):
            raise SystemExit(f"--{name.replace('_', '-')} must divide --segment-steps ({k}) so that "
                             f"every segment holds the same events")
    # one step more than the segments: the last segment ends when that step starts, so the
    # end-of-run work (final report, validation, export) is outside the measurement
    steps = (args.warmup_pairs + args.pairs) * k + 1
    return apply_overrides(with_total_steps(preset(args.preset, args.framework), steps),
                           {"log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
                            "log_every_s": args.log_every_s, "sample_every_s": args.sample_every_s})


# ----------------------------------------------------------------------------- the pacer
def install_pacer(socket_path: str, framework: str, segment_steps: int, role: str) -> None:
    """Wrap ``framework``'s ``train_step`` (in this process) so that every ``segment_steps``
    steps it reports the segment to the coordinator at ``socket_path`` and waits for "go"; in
    the Ray worker also time each ``ray.train.report`` call. Connects on the first step only
    (Ray runs this in every worker process of the session; only the training one steps)."""
    import socket

    from gan_core.frameworks import get_framework

    cls = get_framework(framework)
    if getattr(cls.train_step, "_paced", False):
        return
    st: dict[str, Any] = {"n": 0, "conn": None, "finished": False, "reports": []}

    def boundary() -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if st["conn"] is None:
            import components.raytrain as rt

            sk = socket.socket(socket.AF_UNIX)
            sk.connect(socket_path)
            st["conn"] = sk.makefile("rwb")
            msg: dict[str, Any] = {"hello": role, "pid": os.getpid(), "code": rt.__file__}
        else:
            r = st["reports"]
            msg = {"wall_s": now - st["t_go"], "cpu_s": cpu - st["cpu_mark"],
                   "steps": segment_steps, "reports": len(r), "report_s": sum(r),
                   "report_max_s": max(r, default=0.0)}
        _send(st["conn"], msg)
        st["cpu_mark"] = cpu  # CPU over full cycles: background threads' work while waiting counts
        reply = json.loads(st["conn"].readline())
        st["finished"] = reply.get("finish", False)
        st["reports"] = []
        st["t_go"] = time.perf_counter()

    orig = cls.train_step

    def train_step(self: Any, batch: Any) -> Any:
        if not st["finished"] and st["n"] % segment_steps == 0:
            boundary()
        st["n"] += 1
        return orig(self, batch)

    train_step._paced = True  # type: ignore[attr-defined]
    cls.train_step = train_step
    if role != "bare":
        import ray.train

        report = ray.train.report

        def timed_report(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return report(*a, **kw)
            finally:
                st["reports"].append(time.perf_counter() - t)

        ray.train.report = timed_report


def _bare_main(args: argparse.Namespace) -> int:
    import torch

    from gan_core.engine import train

    torch.set_num_threads(1)  # what a 1-CPU Ray worker gets
    install_pacer(args.socket, args.framework, args.segment_steps, "bare")
    work = Path(args.workdir)
    train(_config(args), work / "data", work / "bare", progress=False)
    return 0


# ----------------------------------------------------------------------------- statistics
def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))


def bootstrap_ci(xs: list[float], n: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``xs``."""
    import numpy as np

    a = np.asarray(xs, float)
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, len(a), size=(n, len(a)))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """The summary line from the counted segment rows (see the module doc)."""
    pairs: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        pairs.setdefault(r["pair"], {})[r["mode"]] = r
    full = [p for p in pairs.values() if all(m in p for m in ROLES)]
    speed = [p["ray+mlflow"]["steps_per_s"] / p["bare"]["steps_per_s"] for p in full]
    cpu = [p["ray+mlflow"]["cpu_ms_per_step"] / p["bare"]["cpu_ms_per_step"] for p in full]
    tot = {m: sum(p[m]["wall_s"] for p in full) for m in ROLES}
    steps = {m: sum(p[m]["steps"] for p in full) for m in ROLES}
    wr = [p["ray+mlflow"] for p in full]
    n_rep = sum(r["reports"] for r in wr)
    s_lo, s_hi = bootstrap_ci(speed, n_boot)
    c_lo, c_hi = bootstrap_ci(cpu, n_boot, seed=1)
    med = _median(speed)
    return {
        "mode": "summary", "pairs": len(full),
        "bare_steps_per_s": round(steps["bare"] / tot["bare"], 3),
        "wrapped_steps_per_s": round(steps["ray+mlflow"] / tot["ray+mlflow"], 3),
        "median_speed_ratio": round(med, 4), "speed_ratio_ci95": [round(s_lo, 4), round(s_hi, 4)],
        "overhead_pct": round(100 * (1 - med), 2),
        "overhead_pct_ci95": [round(100 * (1 - s_hi), 2), round(100 * (1 - s_lo), 2)],
        "total_time_overhead_pct": round(100 * (1 - tot["bare"] / tot["ray+mlflow"]), 2),
        "bare_cpu_ms_per_step": round(_median([p["bare"]["cpu_ms_per_step"] for p in full]), 2),
        "wrapped_cpu_ms_per_step": round(_median([r["cpu_ms_per_step"] for r in wr]), 2),
        "median_cpu_ratio": round(_median(cpu), 4), "cpu_ratio_ci95": [round(c_lo, 4), round(c_hi, 4)],
        "reports": n_rep,
        "report_ms_mean": round(1000 * sum(r["report_s"] for r in wr) / max(n_rep, 1), 2),
        "report_ms_max": round(1000 * max((r["report_max_s"] for r in wr), default=0.0), 2),
        "target": "overhead < 5% of steps/s",
    }


# ----------------------------------------------------------------------------- coordinator
def _send(f: Any, msg: dict[str, Any]) -> None:
    """One JSON line to a socket file."""
    f.write(json.dumps(msg).encode() + b"\n")
    f.flush()


def _wait(ready: Any, who: str, alive: Any) -> None:
    """Poll ``ready(timeout)`` until true; RuntimeError when ``alive()`` names a dead peer or
    :data:`SEGMENT_TIMEOUT_S` passed."""
    deadline = time.monotonic() + SEGMENT_TIMEOUT_S
    while not ready(1.0):
        why = alive()
        if why:
            raise RuntimeError(f"{who}: {why}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{who}: nothing within {SEGMENT_TIMEOUT_S:.0f} s")


def _recv(conn: tuple[Any, Any], who: str, alive: Any) -> dict[str, Any]:

    sk, f = conn
    _wait(lambda t: bool(select.select([sk], [], [], t)[0]), who, alive)
    line = f.readline()
    if not line:
        raise RuntimeError(f"{who}: closed the connection ({alive() or 'still running'})")
    return json.loads(line)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "bare":
        return _bare_main(args)
    import socket

    import mlflow
    import numpy  # noqa: F401 - fail early without it
    import ray
    import torch

    from components import mlflow_utils as mlu
    from components.raytrain import fit, ray_storage, worker_config
    from train_throughput import write_shards

    cfg = _config(args)
    k, n_pairs = args.segment_steps, args.warmup_pairs + args.pairs
    meta = {"framework": args.framework, "preset": args.preset, "segment_steps": k,
            "log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
            "log_every_s": args.log_every_s, "sample_every_s": args.sample_every_s,
            "torch": torch.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__,
            "cpus": os.cpu_count()}
    lines: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        lines.append(row)
        print(json.dumps(row), flush=True)

    load0 = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wrap", dir="/tmp") as tmp:  # short: socket path
        work = Path(tmp)
        write_shards(work / "data" / "train", n_slices=256, inplane=48, subjects=8)
        write_shards(work / "data" / "val", n_slices=32, inplane=48, subjects=2, seed=1)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        run_id = mlu.create_run(uri, "wrapper-bench", run_name="wrapped")
        sock = str(work / "pace.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(sock)
        listener.listen(2)
        hook_args = (sock, args.framework, k, "ray+mlflow")

        def setup_hook() -> None:  # pickled by value: runs in every Ray worker process
            install_pacer(*hook_args)

        # Ray Train's PlacementGroupCleaner asks the state API of the cluster it auto-detects
        # (on a machine shared with other Ray clusters: the newest) whether the controller lives;
        # "not found" counts as dead and it kills this run's workers (seen here at load 17, when
        # another cluster started). With no API server its queries fail and it keeps waiting.
        os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"worker_process_setup_hook": setup_hook})
        bare = None
        try:
            bare = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:]),
                                     "--role", "bare", "--socket", sock, "--workdir", str(work)])
            fit_err: list[BaseException] = []
            spec = worker_config(cfg, {"train": str(work / "data" / "train"), "val": str(work / "data" / "val")},
                                 tracking_uri=uri, run_id=run_id, export_uri=str(work / "export"))

            def run_fit() -> None:
                try:
                    fit(spec, name="wrapped", store=ray_storage(str(work / "ray")), num_workers=1,
                        max_failures=0)
                except BaseException as e:  # noqa: BLE001 - re-raised by the coordinator
                    fit_err.append(e)

            fitter = threading.Thread(target=run_fit, daemon=True)
            fitter.start()

            finished: set[str] = set()  # told to run to the end unpaced: may exit

            def alive() -> str | None:
                if bare.poll() is not None and (bare.returncode or "bare" not in finished):
                    return f"the bare process exited with {bare.returncode}"
                if fit_err:
                    return f"the Ray run failed: {fit_err[0]!r}"
                if not fitter.is_alive() and "ray+mlflow" not in finished:
                    return "the Ray run ended early"
                return None

            conns: dict[str, Any] = {}
            for _ in ROLES:
                _wait(lambda t: bool(select.select([listener], [], [], t)[0]), "waiting for both", alive)
                sk, _ = listener.accept()
                c = (sk, sk.makefile("rwb"))
                hello = _recv(c, "a new process", alive)
                conns[hello["hello"]] = c
                here = str(Path(__file__).resolve().parent.parent)
                if not str(Path(hello["code"]).resolve()).startswith(here):
                    raise RuntimeError(f"{hello['hello']} runs components from {hello['code']}, "
                                       f"not from {here}: set PYTHONPATH")
            t_loop = time.perf_counter()
            for i in range(n_pairs):
                order = ROLES if i % 2 == 0 else ROLES[::-1]
                for j, mode in enumerate(order):
                    last = i == n_pairs - 1
                    _send(conns[mode][1], {"finish": False})
                    seg = _recv(conns[mode], mode, alive)
                    if last:  # its remaining step and the end of the run go unpaced
                        _send(conns[mode][1], {"finish": True})
                        finished.add(mode)
                    if i < args.warmup_pairs:
                        continue
                    emit({"mode": mode, "pair": i, "first": j == 0, "steps": seg["steps"],
                          "wall_s": round(seg["wall_s"], 4),
                          "steps_per_s": round(seg["steps"] / seg["wall_s"], 4),
                          "cpu_ms_per_step": round(1000 * seg["cpu_s"] / seg["steps"], 3),
                          "reports": seg["reports"], "report_s": round(seg["report_s"], 5),
                          "report_max_s": round(seg["report_max_s"], 5),
                          "load_avg_1m": os.getloadavg()[0]})
            t_loop = time.perf_counter() - t_loop
            fitter.join(SEGMENT_TIMEOUT_S)
            if fit_err:
                raise fit_err[0]
            if bare.wait(SEGMENT_TIMEOUT_S) != 0:
                raise RuntimeError(f"the bare process exited with {bare.returncode}")
            samples = [a.path for a in mlu.client(uri).list_artifacts(run_id, "samples")]
        finally:
            if bare is not None and bare.poll() is None:
                bare.kill()
            ray.shutdown()
            listener.close()
    summary = summarize([r for r in lines if r.get("pair") is not None], args.bootstrap)
    summary.update(meta, sample_figures=len(samples), measured_s=round(t_loop, 1),
                   total_s=round(time.perf_counter() - t_start, 1),
                   load_avg_start=[round(x, 2) for x in load0],
                   load_avg_end=[round(x, 2) for x in os.getloadavg()],
                   date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    emit(summary)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
