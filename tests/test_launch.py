"""components.launch: the train step run as a Ray job on a REAL Ray cluster with its dashboard
(the session's 2-node loopback cluster, tests/ray_cluster.py), through the Jobs API.

The step is run as its CLI in a subprocess (as a KFP container runs it): its stdout must carry
the job's log, its exit code the job's outcome, and SIGTERM must stop the job. Secrets set in
the step's environment must reach the job and never appear in the logs or the manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.launch import (LAUNCHERS, check_launcher, job_env, resolve_launcher, step_argv)
from components.step import StepInputError, params_from_args, params_parser
from tests.ray_cluster import RayCluster, SharedCluster

pytest_plugins = ("tests.ray_cluster",)  # shared_cluster: one cluster for every module using Ray

REPO = Path(__file__).resolve().parents[1]
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIALAUNCHTEST0001", "AWS_SECRET_ACCESS_KEY": "sEcReT-aws-4711x",
           "MLFLOW_TRACKING_PASSWORD": "sEcReT-mlflow-0815"}
COMMIT = "launch-test-commit-5e1f"


# --------------------------------------------------------------------------- no Ray needed


@pytest.mark.parametrize("launcher,address,expected", [
    ("auto", None, "local"), ("auto", "", "local"), ("auto", "127.0.0.1:6379", "local"),
    ("auto", "http://head:8265", "jobs"), ("auto", "https://head:8265", "jobs"),
    ("jobs", "http://head:8265", "jobs"), ("rayjob", None, "rayjob"),
    ("local", "127.0.0.1:6379", "local")])
def test_resolve_launcher(launcher, address, expected):
    assert resolve_launcher(launcher, address) == expected
    check_launcher(launcher, address)  # a valid combination


@pytest.mark.parametrize("launcher,address,match", [
    ("local", "http://head:8265", "is a Jobs API URL"),
    ("jobs", "head:6379", "must be the head's Jobs API URL"),
    ("jobs", None, "must be the head's Jobs API URL"),
    ("rayjob", "http://head:8265", "ray_address must be empty"),
    ("ssh", None, r"launcher: expected one of \['auto', 'local', 'jobs', 'rayjob'\]")])
def test_bad_launcher_combinations_are_named(launcher, address, match):
    from components.train import TrainParams
    from components.tune import TuneParams

    for cls in (TrainParams, TuneParams):
        with pytest.raises(StepInputError, match=match):
            cls("d", "o", launcher=launcher, ray_address=address)


def test_cli_rejects_unknown_launcher(capsys):
    from components.train import main

    with pytest.raises(SystemExit) as e:
        main(["--data-uri", "d", "--output-uri", "o", "--launcher", "ssh"])
    assert e.value.code == 2 and "invalid choice: 'ssh'" in capsys.readouterr().err


def _roundtrip(cls, p):
    parser = params_parser(cls, "x", "x")
    return params_from_args(cls, parser.parse_args(step_argv(p)))


def test_step_argv_rebuilds_train_params(tmp_path, monkeypatch):
    from components.train import TrainParams

    monkeypatch.chdir(tmp_path)
    p = TrainParams("prep", "s3://b/out", framework="pix2pix", preset="tiny", task="mr2ct",
                    config_uri="cfg/best.yaml", overrides={"loss.image": 50.5, "data.batch_size": 8,
                                                           "fw.name": "x y", "flag": True},
                    steps=7, num_workers=3, use_gpu=True,
                    resources_per_worker={"CPU": 4, "GPU": 1}, max_failures=0,
                    tracking_uri="http://mlflow:5000", experiment="e", run_name="r",
                    ray_address="http://head:8265", launcher="jobs")
    back = _roundtrip(TrainParams, p)
    # the job runs in-process on its own cluster; local paths are absolute (its cwd differs)
    assert back == TrainParams(str(tmp_path / "prep"), "s3://b/out", framework="pix2pix",
                               preset="tiny", task="mr2ct",
                               config_uri=str(tmp_path / "cfg/best.yaml"),
                               overrides=p.overrides, steps=7, num_workers=3, use_gpu=True,
                               resources_per_worker={"CPU": 4, "GPU": 1}, max_failures=0,
                               tracking_uri="http://mlflow:5000", experiment="e", run_name="r",
                               ray_address="auto", launcher="local")
    argv = step_argv(p)
    assert argv[-4:] == ["--ray-address", "auto", "--launcher", "local"]
    assert argv.count("--ray-address") == 1
    assert argv[argv.index("--num-workers") + 1] == "3" and "--use-gpu" in argv


def test_step_argv_rebuilds_tune_params():
    from components.tune import TuneParams

    p = TuneParams("s3://b/prep", "s3://b/tune", framework="pix2pix", num_samples=5,
                   max_steps_per_trial=40, grace_period=10,
                   search_space={"loss.image": ["loguniform", 10.0, 300.0],
                                 "loss.gan": ["choice", [0.5, 1, 2]], "loss.structure": None},
                   num_workers=2, use_gpu=True, overrides={"lr": 0.0002},
                   max_concurrent_trials=3, seed=4, name="study",
                   ray_address="https://head:8265")
    back = _roundtrip(TuneParams, p)
    assert back == TuneParams(**{**p.__dict__, "ray_address": "auto", "launcher": "local"})


def test_step_argv_rebuilds_preprocess_params_with_tuples_and_none():
    from components.preprocess import PreprocessParams

    p = PreprocessParams("s3://b/raw", "s3://b/prep", spacing=None, split=(0.5, 0.25, 0.25),
                         inplane=(64, 48), register="affine", seed=3,
                         ray_address="http://head:8265")
    back = _roundtrip(PreprocessParams, p)
    # spacing None (keep the CT grid) must not fall back to the default (3, 3, 5)
    assert back == PreprocessParams(**{**p.__dict__, "ray_address": "auto", "launcher": "local"})
    assert back.spacing is None


def test_tracking_uri_travels_in_the_environment_not_the_command():
    from components.launch import entrypoint, job_params
    from components.train import TrainParams

    uri = "http://medgan:sEcReT-pw@mlflow:5000"
    p, env = job_params(TrainParams("s3://b/d", "s3://b/o", tracking_uri=uri,
                                    ray_address="http://h:8265"), {"MLFLOW_TRACKING_URI": "x"})
    assert env == {"MLFLOW_TRACKING_URI": uri} and "sEcReT" not in entrypoint("components.train", p)


def test_job_env_passes_names_listed_only():
    env = {**SECRETS, "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-1",
           "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MEDGAN_GIT_COMMIT": "abc",
           "HOME": "/root", "PATH": "/bin", "RAY_ADDRESS": "x:1", "AWS_SESSION_TOKEN": ""}
    assert sorted(job_env(env)) == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_REGION",
                                    "AWS_SECRET_ACCESS_KEY", "MEDGAN_GIT_COMMIT",
                                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"]
    assert set(LAUNCHERS) == {"auto", "local", "jobs", "rayjob"}


class _FlakyJobsApi:
    """A Jobs API that does not answer ``fail`` times, then says SUCCEEDED (polling logic only;
    the real API is exercised by the tests below)."""

    def __init__(self, fail: int) -> None:
        self.fail, self.stopped = fail, []

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        if self.fail:
            self.fail -= 1
            raise ConnectionError("dashboard restarting")
        return JobStatus.SUCCEEDED

    def stop_job(self, job_id):
        self.stopped.append(job_id)


def test_wait_rides_out_an_unreachable_jobs_api():
    from components.launch import JobFailed, _wait

    api = _FlakyJobsApi(fail=3)
    assert str(_wait(api, "j", poll_s=0.01, unreachable_s=5)) == "SUCCEEDED" and not api.stopped
    api = _FlakyJobsApi(fail=10**6)
    with pytest.raises(JobFailed, match="did not answer for 0 s .*dashboard restarting"):
        _wait(api, "j", poll_s=0.01, unreachable_s=0.05)
    assert api.stopped == ["j"]


# --------------------------------------------------------------------------- a real Ray head


@pytest.fixture(scope="module")
def head(shared_cluster: SharedCluster) -> Iterator[RayCluster]:
    """The session's loopback cluster (tests/ray_cluster.py): its head runs the Jobs API."""
    from ray.job_submission import JobSubmissionClient

    c = shared_cluster.cluster
    with c.activated():
        c.heal()
        yield c
        client = JobSubmissionClient(c.dashboard_url)  # leave no job running behind us
        for job in client.list_jobs():
            if not job.status.is_terminal() and job.submission_id:
                client.stop_job(job.submission_id)


@pytest.fixture(scope="module")
def data_uri(tiny_shards, tmp_path_factory) -> str:
    from tests.test_ray_train import preprocessed_dir

    return str(preprocessed_dir(tiny_shards, tmp_path_factory.mktemp("processed")))


def _step_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AWS_", "MEDGAN_"))}
    env.update(SECRETS, MEDGAN_GIT_COMMIT=COMMIT, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _train_cmd(data_uri: str, out: Path, dashboard_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "components.train", "--data-uri", data_uri, "--output-uri",
            str(out), "--framework", "pix2pix", "--preset", "tiny", "--max-failures", "0",
            "--ray-address", dashboard_url, *extra]


def _our_jobs(dashboard_url: str, out: Path) -> list:
    from ray.job_submission import JobSubmissionClient

    return [j for j in JobSubmissionClient(dashboard_url).list_jobs()
            if (j.metadata or {}).get("medgan.output_uri") == str(out)]


def test_train_runs_as_ray_job(head, data_uri, tmp_path):
    out = tmp_path / "train"
    t0 = time.time()
    r = subprocess.run(_train_cmd(data_uri, out, head.dashboard_url, "--steps", "2"),
                       cwd=tmp_path, env=_step_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"train via Jobs API: {time.time() - t0:.1f} s")

    (job,) = _our_jobs(head.dashboard_url, out)
    assert str(job.status) == "SUCCEEDED" and job.submission_id.startswith("medgan-train-")
    assert job.entrypoint.startswith("python -m components.train ")
    assert job.entrypoint.endswith(" --ray-address auto --launcher local")
    assert head.dashboard_url not in job.entrypoint
    # the credentials travelled to the job in its runtime_env, as names + values
    env_vars = job.runtime_env["env_vars"]
    assert {k: env_vars[k] for k in SECRETS} == SECRETS and env_vars["MEDGAN_GIT_COMMIT"] == COMMIT
    assert "working_dir" not in job.runtime_env

    # the job's log reached the step's stdout: the job's own summary line + the step's
    summaries = [line for line in r.stdout.splitlines() if line.startswith('{"mlflow_run_id"')]
    assert len(summaries) == 2 and summaries[0] == summaries[1], r.stdout[-3000:]
    assert f"Running entrypoint for job {job.submission_id}" in r.stdout
    # rank 0's progress line, not Ray's one line per report of every rank
    assert "pix2pix progress: step 2/2 (100%)" in r.stdout, r.stdout[-3000:]
    assert "Reporting training result" not in r.stdout + r.stderr
    assert "submitting Ray job " + job.submission_id in r.stderr
    # the manifest the job wrote is what the step returned; the job's own process wrote it
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(summaries[-1]) == {k: manifest[k] for k in json.loads(summaries[-1])}
    assert manifest["steps"] == 2 and manifest["params"]["launcher"] == "local"
    assert manifest["git_commit"] == COMMIT  # $MEDGAN_GIT_COMMIT reached the job's process
    assert (out / "model.pt").is_file() and (out / "_SUCCESS").is_file()
    # names logged, values never
    assert "AWS_SECRET_ACCESS_KEY" in r.stderr
    texts = {"stdout": r.stdout, "stderr": r.stderr, "manifest": (out / "manifest.json").read_text(),
             "config": (out / "config.yaml").read_text()}
    for name, text in texts.items():
        for key, secret in SECRETS.items():
            assert secret not in text, f"{key}'s value in the step's {name}"


def test_failing_job_fails_the_step(head, tmp_path):
    out = tmp_path / "train"
    missing = tmp_path / "no-such-preprocess"
    r = subprocess.run(_train_cmd(str(missing), out, head.dashboard_url, "--steps", "2"),
                       cwd=tmp_path, env=_step_env(), capture_output=True, text=True, timeout=600)
    (job,) = _our_jobs(head.dashboard_url, out)
    assert str(job.status) == "FAILED"
    # the job's step exited 2 (bad input): so does this one, with the job's error
    assert r.returncode == 2, r.stderr[-3000:]
    expected = f"{missing}/manifest.json: not found (expected the output of step 'preprocess')"
    assert expected in r.stdout  # streamed from the job
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"error: Ray job {job.submission_id} on {head.dashboard_url} ended FAILED: "
                    f"Job entrypoint command failed with exit code 2; last log line: "
                    f"error: {expected}"), last
    assert not out.exists()


def test_sigterm_stops_the_ray_job(head, data_uri, tmp_path):
    out = tmp_path / "train"
    proc = subprocess.Popen(_train_cmd(data_uri, out, head.dashboard_url, "--steps", "100000"),
                            cwd=tmp_path, env=_step_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:  # wait until the job runs (its driver has started the step)
            jobs = _our_jobs(head.dashboard_url, out)
            if jobs and str(jobs[0].status) == "RUNNING":
                break
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the job did not start within 300 s"
            time.sleep(1)
        time.sleep(5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM: stopping Ray job" in stderr
    (job,) = _our_jobs(head.dashboard_url, out)
    assert str(job.status) == "STOPPED"
    assert not (out / "manifest.json").exists()


def test_tune_runs_as_ray_job(head, data_uri, tmp_path):
    out = tmp_path / "tune"
    r = subprocess.run(
        [sys.executable, "-m", "components.tune", "--data-uri", data_uri, "--output-uri", str(out),
         "--framework", "pix2pix", "--preset", "tiny", "--num-samples", "1",
         "--max-steps-per-trial", "2", "--max-concurrent-trials", "1",
         "--space", "loss.image=loguniform:10:300", "--ray-address", head.dashboard_url],
        cwd=tmp_path, env=_step_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (job,) = _our_jobs(head.dashboard_url, out)
    assert str(job.status) == "SUCCEEDED" and job.submission_id.startswith("medgan-tune-")
    assert "--space loss.image=loguniform:10.0:300.0" in job.entrypoint
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step"] == "tune" and manifest["counts"]["trials"] == 1
    assert json.loads(r.stdout.strip().splitlines()[-1])["best"] == manifest["best"]
    assert (out / "best_config.yaml").is_file()
