"""Launcher ``rayjob``: a step's work as a KubeRay ``RayJob`` (ray.io/v1) with its own
ephemeral RayCluster, created through the Kubernetes API, waited for, deleted after.

* :func:`rayjob_manifest` is pure: it builds the object (validated in tests against the KubeRay
  CRD). Credentials reach the Ray pods only through ``envFrom`` Secret references; the
  manifest carries non-secret variables (endpoint, region, tracking URI without userinfo) only.
* :func:`submit_rayjob` creates it with ``kubernetes.client.CustomObjectsApi``, polls
  ``status.jobDeploymentStatus`` / ``status.jobStatus``, copies the submitter pod's log (the
  Ray job's log, :class:`SubmitterLogs`, ``CoreV1Api``) into the step's log at each poll, and
  deletes it when it ends (or, given
  a signal ``guard``, when the step gets SIGTERM/SIGINT: deleting the RayJob stops the job and
  its cluster).
* :class:`RayJobSettings`: the cluster-side settings (image, namespace, Secrets, ...) from
  ``MEDGAN_RAYJOB_*``. :func:`components.launch.run_rayjob` puts it all together for a step
  (entrypoint from the step's params, ``--num-workers`` / ``--use-gpu`` included).

Example:
    >>> m = rayjob_manifest("medgan-train-1", "medgan", "ghcr.io/medgan/medgan:0.1.0",
    ...                     "python -m components.train --num-workers 2 --use-gpu",
    ...                     num_workers=2, gpus_per_worker=1)
    >>> m["kind"], m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    ('RayJob', 2)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, TextIO

from components.step import StepInputError

__all__ = ["GROUP", "VERSION", "PLURAL", "SUBMITTER_LABEL", "RayJobFailed", "RayJobSettings",
           "SubmitterLogs", "rayjob_manifest", "rayjob_name", "submit_rayjob"]

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
#: ``status.jobStatus`` values after which a RayJob's job will not change.
TERMINAL_JOB = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: ``status.jobDeploymentStatus`` values of a finished RayJob.
TERMINAL_DEPLOYMENT = frozenset({"Complete", "Failed"})
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_GPU = "nvidia.com/gpu"


class RayJobFailed(RuntimeError):
    """The RayJob ended FAILED / STOPPED (or did not finish in time); the message carries its
    status, reason and message."""


def _quantity(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def rayjob_manifest(name: str, namespace: str, image: str, entrypoint: str, *,
                    num_workers: int = 1, gpus_per_worker: int = 0,
                    cpus_per_worker: float = 4, memory_per_worker: str = "16Gi",
                    head_cpus: float = 2, head_memory: str = "8Gi",
                    env: Mapping[str, str] | None = None,
                    env_from_secrets: Sequence[str] = (),
                    optional_secrets: Sequence[str] = (),
                    ray_version: str = "2.60.0",
                    node_selector: Mapping[str, str] | None = None,
                    tolerations: Sequence[Mapping[str, Any]] | None = None,
                    ttl_seconds: int = 3600, active_deadline_seconds: int | None = None,
                    service_account: str | None = None,
                    labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A ``ray.io/v1`` RayJob running ``entrypoint`` on an ephemeral RayCluster: a head that
    takes no training work (``num-cpus: 0``) and ``num_workers`` worker pods with
    ``cpus_per_worker`` / ``memory_per_worker`` / ``gpus_per_worker`` GPUs each (one Ray Train
    worker per pod). The cluster is deleted when the job finishes (``shutdownAfterJobFinishes``),
    the RayJob ``ttl_seconds`` later. ``env``: plain variables of every Ray container;
    ``env_from_secrets`` / ``optional_secrets``: Secrets whose keys become variables (the
    credentials). ``node_selector`` / ``tolerations`` go to the worker pods (with GPUs, a
    toleration of the ``nvidia.com/gpu`` taint is added when none is given).

    >>> m = rayjob_manifest("j", "ns", "img:1", "python -m components.train", num_workers=3,
    ...                     env_from_secrets=["medgan-s3"])
    >>> w = m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    >>> w["replicas"], w["template"]["spec"]["containers"][0]["envFrom"]
    (3, [{'secretRef': {'name': 'medgan-s3'}}])
    """
    if num_workers < 1:
        raise StepInputError(f"rayjob: num_workers must be >= 1, got {num_workers}")
    if gpus_per_worker < 0:
        raise StepInputError(f"rayjob: gpus_per_worker must be >= 0, got {gpus_per_worker}")
    plain = sorted((env or {}).items())
    env_list = [{"name": k, "value": str(v)} for k, v in plain]
    env_from = ([{"secretRef": {"name": s}} for s in env_from_secrets]
                + [{"secretRef": {"name": s, "optional": True}} for s in optional_secrets])
    base_labels = {"app.kubernetes.io/name": "medgan", **(labels or {})}

    def container(cname: str, cpu: float, memory: str, gpus: int,
                  ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        res = {"cpu": _quantity(cpu), "memory": memory}
        if gpus:
            res[_GPU] = str(gpus)
        c: dict[str, Any] = {"name": cname, "image": image, "imagePullPolicy": "IfNotPresent",
                             "resources": {"requests": dict(res), "limits": dict(res)},
                             "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
        if env_list:
            c["env"] = [dict(e) for e in env_list]
        if env_from:
            c["envFrom"] = [json.loads(json.dumps(e)) for e in env_from]
        if ports:
            c["ports"] = ports
        return c

    def pod(component: str, c: dict[str, Any], shm: str, worker: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                "fsGroup": 1000},
            "containers": [c],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]}
        if service_account:
            spec["serviceAccountName"] = service_account
        if worker:
            if node_selector:
                spec["nodeSelector"] = dict(node_selector)
            tol = list(tolerations) if tolerations is not None else (
                [{"key": _GPU, "operator": "Exists", "effect": "NoSchedule"}]
                if gpus_per_worker else [])
            if tol:
                spec["tolerations"] = [dict(t) for t in tol]
        return {"metadata": {"labels": {**base_labels, "app.kubernetes.io/component": component}},
                "spec": spec}

    head = container("ray-head", head_cpus, head_memory, 0,
                     [{"containerPort": 6379, "name": "gcs-server"},
                      {"containerPort": 8265, "name": "dashboard"},
                      {"containerPort": 10001, "name": "client"}])
    worker = container("ray-worker", cpus_per_worker, memory_per_worker, gpus_per_worker)
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": int(ttl_seconds),
        "backoffLimit": 0,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": {
            "rayVersion": ray_version,
            "headGroupSpec": {
                "serviceType": "ClusterIP",
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
                "template": pod("ray-head", head, "2Gi", worker=False)},
            "workerGroupSpecs": [{
                "groupName": "gpu" if gpus_per_worker else "cpu",
                "replicas": num_workers, "minReplicas": num_workers, "maxReplicas": num_workers,
                "rayStartParams": {"num-cpus": _quantity(cpus_per_worker),
                                   "num-gpus": str(gpus_per_worker)},
                "template": pod("ray-worker", worker, "8Gi", worker=True)}]}}
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**base_labels, "app.kubernetes.io/component": "rayjob"}},
            "spec": spec}


def rayjob_name(job_id: str) -> str:
    """A DNS-1123 name (<= 63 chars) from a submission id.

    >>> rayjob_name("medgan-train-1a2b_C")
    'medgan-train-1a2b-c'
    """
    name = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    return name[:63].rstrip("-")


@dataclass(frozen=True)
class RayJobSettings:
    """Cluster-side settings of the ``rayjob`` launcher, read from ``MEDGAN_RAYJOB_*``
    (:meth:`from_env`): IMAGE (required), NAMESPACE (default: the pod's namespace, else
    ``medgan``), SECRETS / OPTIONAL_SECRETS (comma-separated Secret names; defaults
    ``medgan-s3`` / ``medgan-mlflow``), RAY_VERSION (default: this ray), CPUS_PER_WORKER,
    MEMORY_PER_WORKER, NODE_SELECTOR and TOLERATIONS (JSON), TTL_SECONDS, SERVICE_ACCOUNT."""

    image: str
    namespace: str = "medgan"
    secrets: tuple[str, ...] = ("medgan-s3",)
    optional_secrets: tuple[str, ...] = ("medgan-mlflow",)
    ray_version: str = "2.60.0"
    cpus_per_worker: float = 4
    memory_per_worker: str = "16Gi"
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    ttl_seconds: int = 3600
    service_account: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RayJobSettings":
        env = os.environ if environ is None else environ
        p = "MEDGAN_RAYJOB_"

        def get(key: str) -> str | None:
            return env.get(p + key) or None

        def js(key: str) -> Any:
            raw = get(key)
            try:
                return json.loads(raw) if raw else None
            except json.JSONDecodeError as e:
                raise StepInputError(f"${p}{key}: not valid JSON ({e})") from None

        def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = env.get(p + key)
            return default if raw is None else tuple(s.strip() for s in raw.split(",") if s.strip())

        image = get("IMAGE")
        if not image:
            raise StepInputError(f"launcher 'rayjob': ${p}IMAGE must name the image of the Ray "
                                 f"pods (the step's own image, pinned by tag)")
        namespace = get("NAMESPACE") or (_NAMESPACE_FILE.read_text().strip()
                                         if _NAMESPACE_FILE.is_file() else "medgan")
        try:
            import ray

            ray_version = get("RAY_VERSION") or ray.__version__
        except ImportError:
            ray_version = get("RAY_VERSION") or cls.ray_version
        try:
            return cls(image=image, namespace=namespace,
                       secrets=names("SECRETS", cls.secrets),
                       optional_secrets=names("OPTIONAL_SECRETS", cls.optional_secrets),
                       ray_version=ray_version,
                       cpus_per_worker=float(get("CPUS_PER_WORKER") or cls.cpus_per_worker),
                       memory_per_worker=get("MEMORY_PER_WORKER") or cls.memory_per_worker,
                       node_selector=js("NODE_SELECTOR"), tolerations=js("TOLERATIONS"),
                       ttl_seconds=int(get("TTL_SECONDS") or cls.ttl_seconds),
                       service_account=get("SERVICE_ACCOUNT"))
        except ValueError as e:
            raise StepInputError(f"${p}*: {e}") from None


@contextlib.contextmanager
def _no_guard(_stop: Callable[[int], None]) -> Iterator[None]:
    yield


def _load_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _core_api(api: Any) -> Any:
    """A ``CoreV1Api`` on the same connection as the ``CustomObjectsApi`` ``api`` (None for a
    stand-in without one: then no logs are copied)."""
    if getattr(api, "api_client", None) is None:
        return None
    from kubernetes import client

    return client.CoreV1Api(api.api_client)


#: The label the Kubernetes Job controller puts on its pods (value: the Job's name). KubeRay's
#: K8sJobMode runs ``ray job submit`` (which follows the Ray job's log) in a Job named after
#: the RayJob: that pod's log is the job's log.
SUBMITTER_LABEL = "job-name"


class SubmitterLogs:
    """Copies the log of a RayJob's submitter pod to ``out``, one :meth:`poll` at a time (the
    text added since the last poll). The newest pod of the submitter Job counts: a retried
    submitter (a new pod) is copied from its start, announced by a line. Reading needs
    ``pods: list`` and ``pods/log: get`` in the namespace; without them (or before the pod
    runs) nothing is copied and the first error is logged once.

    ``core``: a ``kubernetes.client.CoreV1Api`` (or a stand-in with ``list_namespaced_pod`` and
    ``read_namespaced_pod_log``).
    """

    def __init__(self, core: Any, namespace: str, name: str, out: TextIO) -> None:
        self.core, self.namespace, self.name, self.out = core, namespace, name, out
        self.pod: str | None = None
        self.written = 0
        self.warned = False

    def _newest_pod(self) -> str | None:
        pods = self.core.list_namespaced_pod(self.namespace,
                                             label_selector=f"{SUBMITTER_LABEL}={self.name}").items
        started = [p for p in pods if (p.status.phase or "") in ("Running", "Succeeded", "Failed")]
        if not started:
            return None
        return max(started, key=lambda p: str(p.metadata.creation_timestamp or "")).metadata.name

    def poll(self) -> int:
        """Copy what the submitter pod logged since the last poll; returns the characters
        written."""
        try:
            pod = self._newest_pod()
            if pod is None:
                return 0
            text = self.core.read_namespaced_pod_log(name=pod, namespace=self.namespace)
        except Exception as e:  # noqa: BLE001 - logs are best effort: the status decides
            if not self.warned:
                log.warning("RayJob %s/%s: cannot read the submitter pod's log (%s); "
                            "following its status only", self.namespace, self.name, e)
                self.warned = True
            return 0
        if pod != self.pod:
            if self.pod is not None:
                print(f"RayJob {self.namespace}/{self.name}: submitter pod {pod} (a retry)",
                      file=self.out, flush=True)
            self.pod, self.written = pod, 0
        new = (text or "")[self.written:]
        if new:
            self.out.write(new if new.endswith("\n") else new + "\n")
            self.out.flush()
            self.written = len(text)
        return len(new)


def submit_rayjob(manifest: dict[str, Any], *, api: Any = None, core: Any = None,
                  poll_s: float = 5.0, timeout_s: float | None = None, out: TextIO | None = None,
                  delete: bool = True,
                  guard: Callable[[Callable[[int], None]], ContextManager[Any]] | None = None
                  ) -> dict[str, Any]:
    """Create the RayJob ``manifest``, wait until its job ends, delete it; return its final
    ``status``. While waiting, each status change is printed and the submitter pod's log (the
    Ray job's log, :class:`SubmitterLogs`) is copied to ``out`` (default stdout) at each poll.
    FAILED / STOPPED (or a ``Failed`` deployment) raise :class:`RayJobFailed` with the
    RayJob's reason and message. ``api``: a ``kubernetes.client.CustomObjectsApi`` (default:
    in-cluster config, else kubeconfig); ``core``: a ``CoreV1Api`` for the logs (default: one
    on ``api``'s connection). ``guard(stop)``: a context manager that calls ``stop(signum)`` on
    a stop signal (:func:`components.launch.on_stop_signal`: SIGTERM / SIGINT delete the
    RayJob, stopping its job and cluster, then exit ``128 + signum``)."""
    out = out or sys.stdout
    api = api or _load_api()
    core = core if core is not None else _core_api(api)
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    where = dict(group=GROUP, version=VERSION, namespace=ns, plural=PLURAL)
    api.create_namespaced_custom_object(body=manifest, **where)
    print(f"created RayJob {ns}/{name}", file=out, flush=True)
    logs = SubmitterLogs(core, ns, name, out) if core is not None else None
    deleted = False

    def remove() -> None:
        nonlocal deleted
        if deleted or not delete:
            return
        deleted = True
        try:
            api.delete_namespaced_custom_object(name=name, **where)
            print(f"deleted RayJob {ns}/{name}", file=out, flush=True)
        except Exception as e:  # noqa: BLE001 - say it; the TTL removes it eventually
            log.error("could not delete RayJob %s/%s: %s", ns, name, e)

    def stop(signum: int) -> None:
        log.warning("%s: deleting RayJob %s/%s", signal.Signals(signum).name, ns, name)
        remove()

    t0 = time.monotonic()
    seen: tuple[Any, Any] | None = None
    try:
        with (guard or _no_guard)(stop):
            while True:
                status = (api.get_namespaced_custom_object(name=name, **where) or {}).get("status") or {}
                now = (status.get("jobDeploymentStatus"), status.get("jobStatus"))
                if now != seen:
                    print(f"RayJob {ns}/{name}: deployment {now[0]}, job {now[1]}", file=out, flush=True)
                    seen = now
                if logs is not None:
                    logs.poll()
                if now[1] in TERMINAL_JOB or now[0] in TERMINAL_DEPLOYMENT:
                    if logs is not None:  # the submitter's last lines (it exits after the job)
                        time.sleep(min(poll_s, 2.0))
                        logs.poll()
                    break
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    raise RayJobFailed(f"RayJob {ns}/{name}: not finished after {timeout_s:.0f} s "
                                    f"(deployment {now[0]}, job {now[1]})")
                time.sleep(poll_s)
    finally:
        remove()
    if status.get("jobStatus") != "SUCCEEDED":
        raise RayJobFailed(f"RayJob {ns}/{name} ended: deployment {status.get('jobDeploymentStatus')}, "
                        f"job {status.get('jobStatus')}, reason {status.get('reason')}: "
                        f"{status.get('message')}")
    return status
