"""components.rayjob (+ components.launch.run_rayjob): the RayJob object (validated against the KubeRay CRD in ../shared/crds)
and its create / wait / delete cycle.

No Kubernetes API server is available here: the submit tests drive :func:`submit_rayjob`
against a fake ``CustomObjectsApi`` (same method names and arguments as
``kubernetes.client.CustomObjectsApi``) that plays a scripted sequence of RayJob statuses.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from components.launch import on_stop_signal, plain_env, run_rayjob
from components.rayjob import (RayJobFailed, RayJobSettings, rayjob_manifest, rayjob_name,
                               submit_rayjob)
from components.step import StepInputError

SECRET = "sEcReT-rayjob-9931"
SETTINGS = RayJobSettings(image="ghcr.io/medgan/medgan:0.1.0", namespace="medgan",
                          ray_version="2.60.0")


def _worker(m: dict[str, Any]) -> dict[str, Any]:
    (w,) = m["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return w


def test_manifest_gpu_workers_and_scheduling():
    m = rayjob_manifest("medgan-train-abc", "medgan", "img:1", "python -m components.train",
                        num_workers=4, gpus_per_worker=2, cpus_per_worker=8,
                        memory_per_worker="32Gi", env={"AWS_ENDPOINT_URL": "http://minio:9000"},
                        env_from_secrets=["medgan-s3"], optional_secrets=["medgan-mlflow"],
                        node_selector={"pool": "gpu"}, ttl_seconds=600)
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayJob"
    spec = m["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
    w = _worker(m)
    assert (w["replicas"], w["minReplicas"], w["maxReplicas"]) == (4, 4, 4)
    assert w["rayStartParams"] == {"num-cpus": "8", "num-gpus": "2"}
    pod = w["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert c["envFrom"] == [{"secretRef": {"name": "medgan-s3"}},
                            {"secretRef": {"name": "medgan-mlflow", "optional": True}}]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in head["template"]["spec"]


def test_cpu_manifest_has_no_gpu_or_toleration():
    m = rayjob_manifest("j", "ns", "img:1", "python -m components.train", num_workers=1)
    pod = _worker(m)["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod and _worker(m)["groupName"] == "cpu"
    with pytest.raises(StepInputError, match="num_workers must be >= 1, got 0"):
        rayjob_manifest("j", "ns", "img:1", "x", num_workers=0)


def test_plain_env_keeps_credentials_out():
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": SECRET,
           "MLFLOW_TRACKING_PASSWORD": SECRET, "AWS_ENDPOINT_URL": "http://minio:9000",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "MEDGAN_GIT_COMMIT": "abc", "MEDGAN_RAYJOB_IMAGE": "img"}
    assert plain_env(env) == {"AWS_ENDPOINT_URL": "http://minio:9000",
                              "AWS_DEFAULT_REGION": "us-east-1",
                              "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                              "MEDGAN_GIT_COMMIT": "abc"}


def test_settings_from_env():
    s = RayJobSettings.from_env({"MEDGAN_RAYJOB_IMAGE": "img:2", "MEDGAN_RAYJOB_NAMESPACE": "ns",
                                 "MEDGAN_RAYJOB_SECRETS": "a, b", "MEDGAN_RAYJOB_OPTIONAL_SECRETS": "",
                                 "MEDGAN_RAYJOB_NODE_SELECTOR": '{"pool": "gpu"}',
                                 "MEDGAN_RAYJOB_RAY_VERSION": "2.60.0"})
    assert (s.image, s.namespace, s.secrets, s.optional_secrets, s.node_selector) == (
        "img:2", "ns", ("a", "b"), (), {"pool": "gpu"})
    with pytest.raises(StepInputError, match=r"\$MEDGAN_RAYJOB_IMAGE must name the image"):
        RayJobSettings.from_env({})
    with pytest.raises(StepInputError, match=r"\$MEDGAN_RAYJOB_TOLERATIONS: not valid JSON"):
        RayJobSettings.from_env({"MEDGAN_RAYJOB_IMAGE": "i", "MEDGAN_RAYJOB_TOLERATIONS": "[x"})


# --------------------------------------------------------------------------- CRD validation


def test_manifest_validates_against_the_rayjob_crd():
    from tests import test_infra as infra

    if not infra.CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {infra.CRD_DIR} (the shared/ folder beside the repo)")
    kind, validator = infra.crd_validator("ray.io_rayjobs.yaml")
    assert kind == "RayJob"
    from components.train import TrainParams
    from components.launch import entrypoint

    p = TrainParams("s3://b/prep", "s3://b/train", num_workers=2, use_gpu=True, launcher="rayjob")
    for m in (rayjob_manifest(rayjob_name("medgan-train-0a1b2c3d-4e5f6a7b"), "medgan", "img:1",
                              entrypoint("components.train", p), num_workers=2, gpus_per_worker=1,
                              env={"AWS_ENDPOINT_URL": "http://minio:9000"},
                              env_from_secrets=["medgan-s3"], optional_secrets=["medgan-mlflow"],
                              node_selector={"pool": "gpu"}, active_deadline_seconds=86400,
                              service_account="medgan-ray", labels={"medgan.io/step": "train"}),
              rayjob_manifest("j", "ns", "img:1", "python -m components.tune")):
        assert infra.errors(validator, m) == []
    # the validator does catch a broken object
    bad = rayjob_manifest("j", "ns", "img:1", "x")
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert len(infra.errors(validator, bad)) == 2


# --------------------------------------------------------------------------- submit (fake API)


class FakeCustomObjectsApi:
    """Stands in for ``kubernetes.client.CustomObjectsApi``: stores created objects and
    answers ``get`` with the next scripted status (``on_get`` runs a hook per poll)."""

    def __init__(self, statuses: list[dict[str, Any]], on_get=None) -> None:
        self.statuses, self.on_get = list(statuses), on_get
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    def _check(self, group: str, version: str, plural: str) -> None:
        assert (group, version, plural) == ("ray.io", "v1", "rayjobs")

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        assert body["metadata"]["namespace"] == namespace
        self.objects[(namespace, body["metadata"]["name"])] = json.loads(json.dumps(body))
        self.calls.append("create")
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        obj = self.objects[(namespace, name)]
        self.calls.append("get")
        if self.on_get:
            self.on_get(len([c for c in self.calls if c == "get"]), obj)
        if self.statuses:
            obj["status"] = self.statuses.pop(0)
        return obj

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        del self.objects[(namespace, name)]
        self.calls.append("delete")


RUNNING = [{"jobDeploymentStatus": "Initializing"},
           {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
           {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}]


def test_run_rayjob_success_reads_manifest_and_deletes(tmp_path, capsys):
    from components.step import step_manifest, write_manifest
    from components.train import TrainParams

    out = tmp_path / "train"
    api = FakeCustomObjectsApi(RUNNING + [{"jobDeploymentStatus": "Complete",
                                           "jobStatus": "SUCCEEDED"}])
    created: list[dict[str, Any]] = []

    def job_runs(n: int, obj: dict[str, Any]) -> None:  # the "cluster" writes the output
        if n == 1:
            created.append(json.loads(json.dumps(obj)))
        if n == 3:
            out.mkdir()
            write_manifest(out, step_manifest("train", inputs={}, params={}, outputs={},
                                              steps=2))

    api.on_get = job_runs
    p = TrainParams("s3://b/prep", str(out), num_workers=2, use_gpu=True, launcher="rayjob",
                    tracking_uri=f"http://medgan:{SECRET}@mlflow:5000")
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": "http://minio:9000"}
    m = run_rayjob("components.train", "train", p, api=api, settings=SETTINGS, environ=env,
                   poll_s=0)
    assert m["step"] == "train" and m["steps"] == 2
    assert api.calls == ["create", "get", "get", "get", "get", "delete"] and not api.objects
    (body,) = created
    ep = body["spec"]["entrypoint"]
    assert ep.startswith("python -m components.train ") and ep.endswith("--ray-address auto --launcher local")
    assert "--num-workers 2" in ep and "--use-gpu" in ep
    w = _worker(body)
    assert w["replicas"] == 2 and w["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"
    assert SECRET not in json.dumps(body)  # credentials only through Secret references
    assert "--tracking-uri" not in ep
    assert w["template"]["spec"]["containers"][0]["env"] == [
        {"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"}]
    log = capsys.readouterr().out
    assert SECRET not in log
    assert "job RUNNING" in log and "job SUCCEEDED" in log and "deleted RayJob" in log


def test_failed_rayjob_raises_with_its_message_and_is_deleted():
    m = rayjob_manifest("j", "ns", "img:1", "python -m components.train")
    api = FakeCustomObjectsApi(RUNNING + [{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                                           "reason": "AppFailed",
                                           "message": "Job entrypoint command failed with exit code 1"}])
    with pytest.raises(RayJobFailed, match=r"RayJob ns/j ended: deployment Failed, job FAILED, "
                                        r"reason AppFailed: Job entrypoint command failed"):
        submit_rayjob(m, api=api, poll_s=0)
    assert api.calls[-1] == "delete" and not api.objects


def test_rayjob_timeout_deletes():
    m = rayjob_manifest("j", "ns", "img:1", "x")
    api = FakeCustomObjectsApi([{"jobDeploymentStatus": "Initializing"}] * 1000)
    with pytest.raises(RayJobFailed, match="not finished after 0 s"):
        submit_rayjob(m, api=api, poll_s=0.01, timeout_s=0.05)
    assert api.calls[-1] == "delete" and not api.objects


def test_sigterm_deletes_the_rayjob():
    m = rayjob_manifest("j", "ns", "img:1", "x")

    def stopped_by_kfp(n: int, _obj: dict[str, Any]) -> None:
        if n == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    api = FakeCustomObjectsApi(RUNNING * 100, on_get=stopped_by_kfp)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        submit_rayjob(m, api=api, poll_s=0.01, guard=on_stop_signal)
    assert e.value.code == 128 + signal.SIGTERM
    assert api.calls.count("delete") == 1 and not api.objects
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_rayjob_name_is_dns_safe():
    name = rayjob_name("Medgan_Train." + "x" * 80)
    assert len(name) <= 63 and name == name.lower() and not name.endswith("-")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


class ScriptedApiClient:
    """A ``kubernetes.client.ApiClient`` whose server is a script: the REAL ``CoreV1Api``
    builds each request (so its parameter names are checked) and this answers it. Pods of the
    submitter Job appear and log as ``timeline[n]`` says at the n-th status poll."""

    def __new__(cls, *a, **kw):  # a real ApiClient subclass, made lazily (import cost)
        from kubernetes import client

        class _Client(client.ApiClient):
            def __init__(self, timeline, poll) -> None:
                super().__init__(client.Configuration())
                self.timeline, self.poll, self.requests = timeline, poll, []

            def call_api(self, resource_path, method, path_params=None, query_params=None,
                         *args, **kwargs):
                q = dict(query_params or [])
                self.requests.append((method, resource_path, path_params, q))
                pods = self.timeline[min(self.poll[0], len(self.timeline) - 1)]
                if resource_path.endswith("/pods"):
                    assert q == {"labelSelector": "job-name=j"}
                    return client.V1PodList(items=[
                        client.V1Pod(metadata=client.V1ObjectMeta(name=n, creation_timestamp=t),
                                     status=client.V1PodStatus(phase=phase))
                        for n, (t, phase, _log) in pods.items()])
                assert resource_path.endswith("/pods/{name}/log")
                return pods[path_params["name"]][2]

        return _Client(*a, **kw)


def test_submitter_pod_log_is_copied_once_in_order_across_a_retry(capsys):
    from datetime import datetime, timezone

    from kubernetes import client

    t1, t2 = (datetime(2026, 1, 1, 0, m, tzinfo=timezone.utc) for m in (1, 2))
    line = "medgan-1 progress: step {}/8 ({}%)\n"
    first = "Job submission server address: http://j-head:8265\n" + line.format(2, 25)
    timeline = [  # by status poll: the submitter Job's pods {name: (created, phase, log)}
        {},
        {"j-a": (t1, "Pending", "")},
        {"j-a": (t1, "Running", first)},
        {"j-a": (t1, "Running", first + line.format(4, 50))},
        {"j-a": (t1, "Failed", first + line.format(4, 50)), "j-b": (t2, "Running", "retry\n")},
        {"j-a": (t1, "Failed", first + line.format(4, 50)),
         "j-b": (t2, "Succeeded", "retry\n" + line.format(8, 100))},
    ]
    poll = [0]
    statuses = RUNNING + [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}] * 2 + [
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]

    def tick(n: int, _obj: dict[str, Any]) -> None:
        poll[0] = n - 1

    api = FakeCustomObjectsApi(statuses, on_get=tick)
    api_client = ScriptedApiClient(timeline, poll)
    submit_rayjob(rayjob_manifest("j", "ns", "img:1", "x"), api=api,
                  core=client.CoreV1Api(api_client), poll_s=0)
    out = capsys.readouterr().out
    copied = [x for x in out.splitlines() if not x.startswith(("created RayJob", "deleted RayJob",
                                                               "RayJob ns/j: deployment"))]
    assert copied == ["Job submission server address: http://j-head:8265",
                      "medgan-1 progress: step 2/8 (25%)", "medgan-1 progress: step 4/8 (50%)",
                      "RayJob ns/j: submitter pod j-b (a retry)", "retry",
                      "medgan-1 progress: step 8/8 (100%)"], out
    assert out.index("job SUCCEEDED") < out.index("step 8/8") < out.index("deleted RayJob")
    logs = [r for r in api_client.requests if r[1].endswith("/log")]
    assert {(r[2]["namespace"], r[2]["name"]) for r in logs} == {("ns", "j-a"), ("ns", "j-b")}


def test_unreadable_submitter_log_warns_once_and_status_decides(caplog):
    class Forbidden:
        def __init__(self) -> None:
            self.calls = 0

        def list_namespaced_pod(self, namespace, label_selector):
            self.calls += 1
            raise RuntimeError("(403) pods is forbidden")

    core = Forbidden()
    api = FakeCustomObjectsApi(RUNNING + [{"jobDeploymentStatus": "Complete",
                                           "jobStatus": "SUCCEEDED"}])
    with caplog.at_level("WARNING", logger="components.rayjob"):
        status = submit_rayjob(rayjob_manifest("j", "ns", "img:1", "x"), api=api, core=core,
                               poll_s=0)
    assert status["jobStatus"] == "SUCCEEDED" and core.calls == 5
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["RayJob ns/j: cannot read the submitter pod's log ((403) pods is "
                        "forbidden); following its status only"]
