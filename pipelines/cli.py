"""The one pipeline CLI: ``python -m pipelines <app> --compile OUT.yaml | --host URL | --local``.

    python -m pipelines --list
    python -m pipelines cyclegan_mr_ct --compile medgan_local/cyclegan_mr_ct.yaml
    python -m pipelines cyclegan_mr_ct --host https://kfp.example.org --experiment sct
    python -m pipelines kspace_recon --local --workdir medgan_kspace --param preset=tiny \\
        --param 'overrides={"task.acceleration": 8, "task.center_fraction": 0.04}'

``--param KEY=VALUE`` (repeatable) sets a pipeline parameter: the run's argument with ``--host`` and
``--local``, the compiled default with ``--compile``. Bad input (unknown app, parameter, framework
or task) exits with status 2 and a message naming it.

``--local`` prints one line per step and a closing summary (model, metrics, figures, the
``mlflow ui`` command); each step's full output is in ``<workdir>/logs/<run>/<nn>-<step>.log``
(:mod:`pipelines.local_console`); ``--verbose`` prints kfp.local's own output instead. A failed
step prints the end of its log and the run exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from pipelines.apps import APPS, build_app, get_app
from pipelines.builder import parse_params, run_local


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines",
                                description="Compile, submit or run here one application's KFP v2 pipeline.")
    p.add_argument("app", nargs="?", help="the application (see --list)")
    p.add_argument("--list", action="store_true", help="list the applications and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compile", metavar="OUT.yaml", help="write the pipeline IR")
    mode.add_argument("--host", metavar="URL", help="submit a run to this Kubeflow Pipelines API")
    mode.add_argument("--local", action="store_true", help="run here with kfp.local on embedded defaults")
    p.add_argument("--experiment", default=None, help="KFP experiment name (with --host)")
    p.add_argument("--workdir", default="medgan_local", help="with --local: where everything is written")
    p.add_argument("--verbose", action="store_true",
                   help="with --local: print kfp.local's full output instead of one line per step")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline parameter (repeatable), e.g. subjects=8, run_tune=true, framework=unit")
    return p


def list_apps() -> str:
    """One line per application: name, framework/task, whether it registers, description."""
    rows = [(name, f"{app.framework}/{app.task}", "registers" if app.register else "",
             app.description) for name, app in sorted(APPS.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3]
                     for row in rows)


def _check_names(params: Mapping[str, Any]) -> None:
    """A ``framework``/``task`` parameter must name one ``gan_core`` resolves (shipped or registered)."""
    if "framework" in params:
        from gan_core.frameworks import get_framework

        get_framework(params["framework"])
    if "task" in params:
        from gan_core.tasks import get_task

        get_task(params["task"])


def compile_app(name: str, out: str | Path, params: Mapping[str, Any] | None = None) -> Path:
    """Write application ``name``'s KFP IR to ``out`` (``.yaml`` or ``.json``), ``params`` as its
    defaults; written to a temporary name beside ``out``, then renamed."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        compiler.Compiler().compile(build_app(name, params), package_path=str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on bad input)."""
    p = _parser()
    args = p.parse_args(argv)
    if args.list:
        print(list_apps())
        return 0
    if args.app is None:
        p.error("name an application (python -m pipelines --list shows them)")
    try:
        get_app(args.app)
    except KeyError as exc:
        p.error(str(exc.args[0]))
    if not (args.compile or args.host or args.local):
        p.error("one of --compile OUT.yaml, --host URL or --local is required")
    try:
        pipeline = build_app(args.app)
        params = parse_params(pipeline, args.param)
        _check_names(params)
    except (KeyError, ValueError) as exc:
        p.error(str(exc.args[0]) if exc.args else str(exc))
    if args.compile:
        compile_app(args.app, args.compile, params)
        print(f"wrote {args.compile}")
    elif args.host:
        import kfp

        client = kfp.Client(host=args.host)
        run = client.create_run_from_pipeline_func(pipeline, arguments=params,
                                                   experiment_name=args.experiment)
        print(f"submitted run {run.run_id} to {args.host}")
    else:
        return _run_here(pipeline, args.workdir, params, verbose=args.verbose)
    return 0


def _run_here(pipeline: Any, workdir: str, params: dict[str, Any], *, verbose: bool) -> int:
    """``--local``: run the DAG with kfp.local; quiet unless ``verbose`` (see module docstring)."""
    from pipelines.local_console import quiet_console, run_summary

    if verbose:
        res = run_local(pipeline, workdir, **params)
        print(f"pipeline finished in {res['seconds']:.0f}s; result: {res['output']}")
        print(f"browse: mlflow ui --backend-store-uri {res['tracking_uri']}")
        return 0
    log_dir = Path(workdir).resolve() / "logs" / time.strftime("%Y%m%d-%H%M%S")
    print(f"running {pipeline.name} here with kfp.local; step logs: {log_dir}", flush=True)
    try:
        with quiet_console(log_dir) as con:
            res = run_local(pipeline, workdir, **params)
    except RuntimeError as exc:  # kfp.local: a task finished with status FAILURE
        failed = [r for r in con.results if r.status != "SUCCESS"]
        for line in con.log_tail(failed[-1]) if failed else []:
            print(f"    {line}", file=sys.stderr)
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        print(f"pipeline failed: {reason}; logs: {log_dir}", file=sys.stderr)
        return 1
    print(run_summary(con.results, res["tracking_uri"], log_dir, res["seconds"]))
    return 0
