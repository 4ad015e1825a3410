"""A real multi-node Ray cluster on loopback, for tests: ``ray start --head`` plus ``ray start
--address=<head>`` per extra node, each in its own process group.

Node 0 is the head; node ``i >= 1`` carries the custom resource ``{"node_<letter>": 1}``
(node 1: ``node_b``) so a test can pin work to it. Every node gets ``num_cpus`` CPUs, a small
object store and the environment ``s3_env`` (e.g. the ``AWS_*`` variables of a moto server:
Ray workers inherit their raylet's environment, so that is how they reach S3). Extra nodes share
the head's temp dir (one machine). Teardown SIGKILLs exactly the process groups started here
(never ``ray stop``, which would kill every Ray on the machine).

A test session shares one such cluster (:func:`shared_cluster`, a pytest fixture: test modules
name this module in ``pytest_plugins``). PYTEST_DONT_REWRITE (no test asserts here; the test
modules import it before pytest loads it as a plugin).

Example:
    >>> with ray_cluster(nodes=2, num_cpus=1, dashboard=False) as c:     # doctest: +SKIP
    ...     ray.init(address=c.address)
    ...     c.kill_node(1); c.restart_node(1)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["RAY", "PROBE_JOB", "BUCKET", "Node", "RayCluster", "SharedCluster", "environ", "free_port",
           "moto_s3", "ray_cluster", "shared_cluster", "start_cluster", "wait_for"]

RAY = str(Path(sys.executable).with_name("ray"))
#: Environment of every node and of this process while the cluster is up.
BASE_ENV = {
    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    # the Train controller polls workers every 2 s by default, one report per poll: poll faster
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # a killed node is declared dead after period x threshold (default 3 s x 5)
    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "1000",
}


#: Submission id of the job that proves the Jobs API works (dashboard=True).
PROBE_JOB = "ray-cluster-probe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, cond, timeout: float, every: float = 0.5):
    """Poll ``cond()`` until truthy (returned) or raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


@dataclass
class Node:
    """One ``ray start --block`` process (its own process group) and what it registered as."""

    index: int
    resource: str | None                 # the custom resource naming it ("node_b"), head: None
    proc: subprocess.Popen | None = None
    log: Path | None = None
    node_id: str | None = None
    history: list[str] = field(default_factory=list)  # node ids of earlier incarnations
    starts: int = 0                                     # `ray start` processes launched

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def pgid(self) -> int | None:  # start_new_session: the group id is the leader's pid
        return self.proc.pid if self.proc else None


class RayCluster:
    """Handle on the running cluster (see :func:`ray_cluster`)."""

    def __init__(self, nodes: int, num_cpus: int, dashboard: bool, env: dict[str, str],
                 node_env: Mapping[int, Mapping[str, str]] | None = None) -> None:
        self.num_cpus, self.dashboard, self.env = num_cpus, dashboard, env
        self.node_env = {i: dict(e) for i, e in (node_env or {}).items()}
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: socket path limits
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}" if dashboard else None
        self.nodes = [Node(i, None if i == 0 else f"node_{string.ascii_lowercase[i]}")
                      for i in range(nodes)]
        #: what a client of the cluster (this process) sets while using it (:meth:`activated`)
        self.client_env: dict[str, str] = {"RAY_ADDRESS": self.address}

    def activated(self) -> contextlib.AbstractContextManager[None]:
        """``RAY_ADDRESS``, :data:`BASE_ENV` and the S3 variables set in this process while
        inside; the previous values restored afterwards."""
        return environ(self.client_env)

    # ------------------------------------------------------------------ processes
    def _start(self, node: Node) -> None:
        common = ["--block", "--num-cpus", str(self.num_cpus), "--node-ip-address", "127.0.0.1",
                  "--object-store-memory", str(150 * 2**20), "--disable-usage-stats",
                  # own agent ports per node: the defaults (e.g. 52365) are fixed, and two
                  # nodes (or other Ray clusters) on one machine would fight over them
                  "--dashboard-agent-listen-port", str(free_port()),
                  "--dashboard-agent-grpc-port", str(free_port()),
                  "--runtime-env-agent-port", str(free_port()),
                  "--metrics-export-port", str(free_port())]
        if node.index == 0:
            cmd = [RAY, "start", "--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                   f"--include-dashboard={'true' if self.dashboard else 'false'}", *common]
            if self.dashboard:
                cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
        else:
            cmd = [RAY, "start", f"--address={self.address}",
                   "--resources", json.dumps({node.resource: 1}), *common]
        node.starts += 1  # one log per start: a failed start's log stays readable
        node.log = Path(self.temp_dir) / f"node{node.index}-{node.starts}.log"
        with open(node.log, "w") as log:
            node.proc = subprocess.Popen(cmd, env={**self.env, **self.node_env.get(node.index, {})},
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def _registered(self, node: Node) -> str | None:
        """The id of ``node``'s live incarnation once the GCS lists it (else None)."""
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(f"ray start (node {node.index}) exited with {node.proc.returncode}: "
                               f"{node.log.read_text()[-2000:] if node.log else ''}")
        import ray

        try:
            nodes = ray.nodes()
        except Exception:  # noqa: BLE001 - ray's RpcError: the GCS is slow to answer; poll again
            return None
        for n in nodes:
            if not n["Alive"] or n["NodeID"] in node.history:
                continue
            res = n.get("Resources", {})
            if (node.resource is None and n.get("NodeManagerAddress") and "node:__internal_head__" in res) \
                    or (node.resource is not None and res.get(node.resource)):
                return n["NodeID"]
        return None

    def _wait_registered(self, node: Node, timeout: float, attempts: int = 5) -> str:
        """Wait until ``node`` is registered; a worker node whose ``ray start`` gave up (on
        loaded cores: "timed out during startup", GCS deadline exceeded) is started again."""
        for attempt in range(attempts):
            try:
                return wait_for(f"node {node.index} registered", lambda: self._registered(node), timeout)
            except RuntimeError:
                if node.index == 0 or attempt == attempts - 1:
                    raise
                with contextlib.suppress(ProcessLookupError):  # leftovers of the failed group
                    os.killpg(node.pgid, signal.SIGKILL)
                self._start(node)  # in a new process group
        raise AssertionError("unreachable")

    def _wait_gcs(self) -> None:
        def up() -> bool:
            if self.nodes[0].proc.poll() is not None:
                raise RuntimeError(f"ray head exited: {self.nodes[0].log.read_text()[-2000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for("Ray head GCS port", up, 120)

    def _wait_dashboard(self) -> None:
        """The Jobs API answers /api/version well before a job agent is registered ("No
        available agent to submit job"): wait for the version, then run one probe job
        (``python -c pass``, submission id :data:`PROBE_JOB`) to success."""
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for("Ray dashboard / Jobs API", up, 240, every=1.0)
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.dashboard_url)

        def submitted() -> bool:
            try:
                client.submit_job(entrypoint="python -c pass", submission_id=PROBE_JOB)
                return True
            except RuntimeError as e:
                if "No available agent" in str(e):
                    return False
                raise
        try:
            wait_for("a Ray job agent", submitted, 240, every=2.0)
        except TimeoutError as e:
            logs = sorted(Path(self.temp_dir).glob("session_latest/logs/dashboard_agent*.log"))
            tail = "".join(f"\n== {f.name}: {f.read_text()[-1500:]}" for f in logs)
            raise TimeoutError(f"{e}{tail}") from None
        status = wait_for("the probe job", lambda: str(client.get_job_status(PROBE_JOB))
                          if str(client.get_job_status(PROBE_JOB)).endswith(("SUCCEEDED", "FAILED", "STOPPED"))
                          else None, 240, every=1.0)
        if not status.endswith("SUCCEEDED"):
            raise RuntimeError(f"probe job {PROBE_JOB}: {status}: {client.get_job_logs(PROBE_JOB)[-2000:]}")

    def connect(self, timeout: float = 180) -> None:
        """``ray.init`` this process to the cluster, retried: on loaded cores the GCS can
        accept connections well before it answers them."""
        import ray

        def attempt() -> bool:
            try:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
                return True
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ray's RpcError
                # ("Timed out while waiting for GCS to become available" on loaded cores)
                if ray.is_initialized():
                    ray.shutdown()
                if self.nodes[0].proc is None or self.nodes[0].proc.poll() is not None:
                    raise RuntimeError(f"ray head is gone: {e}") from e
                return False
        wait_for("ray.init to the cluster", attempt, timeout, every=2.0)

    def start(self) -> None:
        import ray

        self._start(self.nodes[0])
        self._wait_gcs()
        for node in self.nodes[1:]:
            self._start(node)
        self.connect()  # a driver connection of our own to read the node table
        try:
            for node in self.nodes:
                node.node_id = self._wait_registered(node, 180)
        finally:
            ray.shutdown()
        if self.dashboard:
            self._wait_dashboard()

    def kill_node(self, i: int) -> None:
        """SIGKILL the process group started for node ``i`` (raylet, its workers, and for the
        head the GCS too) and reap it."""
        node = self.nodes[i]
        if node.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pgid, signal.SIGKILL)
        node.proc.wait(timeout=30)
        node.history.append(node.node_id)
        node.proc = None

    def restart_node(self, i: int, timeout: float = 180) -> str:
        """Start node ``i`` again (after :meth:`kill_node`); returns its new node id once
        registered. Needs a connected driver (``ray.is_initialized()``) or connects briefly."""
        import ray

        if i == 0:
            raise ValueError("restart_node(0): the head holds the GCS; restart the cluster instead")
        node = self.nodes[i]
        if node.proc is not None:
            raise RuntimeError(f"node {i} is running (pid {node.pid}); kill_node({i}) first")
        self._start(node)
        connected = ray.is_initialized()
        if not connected:
            self.connect()
        try:
            node.node_id = self._wait_registered(node, timeout)
        finally:
            if not connected:
                ray.shutdown()
        return node.node_id

    def heal(self, timeout: float = 180) -> None:
        """Start again every worker node whose ``ray start`` is gone (a test that killed a node
        and failed before restarting it must not break the next user of a shared cluster)."""
        for node in self.nodes[1:]:
            if node.proc is None or node.proc.poll() is not None:
                if node.proc is not None:
                    self.kill_node(node.index)
                self.restart_node(node.index, timeout)

    def stop(self) -> None:
        """SIGTERM every node's process group at once (workers' before the head's), give them
        5 s together, SIGKILL the groups, reap; remove the temp dir. Idempotent."""
        running = [n for n in reversed(self.nodes) if n.proc is not None]
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for node in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for node in running:
            with contextlib.suppress(ProcessLookupError):  # the whole group: gcs, raylet, workers
                os.killpg(node.pgid, signal.SIGKILL)
            node.proc.wait(timeout=30)
            node.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (``None``: unset) these variables of this process; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cluster_env(s3_env: Mapping[str, str] | None) -> dict[str, str]:
    """:data:`BASE_ENV` + ``s3_env`` + this interpreter's folder first on ``PATH`` (job
    entrypoints such as ``python -m components.train ...`` run this interpreter)."""
    return {**BASE_ENV, **dict(s3_env or {}),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def start_cluster(nodes: int = 2, num_cpus: int = 1, dashboard: bool = True,
                  s3_env: Mapping[str, str] | None = None,
                  node_env: Mapping[int, Mapping[str, str]] | None = None) -> RayCluster:
    """Start a cluster (see :func:`ray_cluster`) and return it; the caller stops it
    (:meth:`RayCluster.stop`). This process's environment is the same before and after."""
    if nodes < 1:
        raise ValueError(f"nodes: expected >= 1, got {nodes}")
    extra = _cluster_env(s3_env)
    with environ({**extra, "RAY_ADDRESS": None}):
        cluster = RayCluster(nodes, num_cpus, dashboard, dict(os.environ), node_env)
        # processes Ray starts on the nodes (e.g. Train's PlacementGroupCleaner) look for "the"
        # local cluster; with other Rays on this machine they must be told which one
        cluster.env["RAY_ADDRESS"] = cluster.address
        cluster.client_env = {**extra, "RAY_ADDRESS": cluster.address}
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
    return cluster


@contextlib.contextmanager
def ray_cluster(nodes: int = 2, num_cpus: int = 1, dashboard: bool = True,
                s3_env: Mapping[str, str] | None = None,
                node_env: Mapping[int, Mapping[str, str]] | None = None) -> Iterator[RayCluster]:
    """Start a ``nodes``-node loopback Ray cluster; yields a :class:`RayCluster` with
    ``.address`` (GCS ``127.0.0.1:port``), ``.dashboard_url`` (None without dashboard),
    ``.nodes`` (pid / process group / node id per node), ``.kill_node(i)``, ``.restart_node(i)``.

    While it is up this process has ``RAY_ADDRESS`` and :data:`BASE_ENV` (+ ``s3_env``) set;
    all restored afterwards. With ``dashboard=True`` it is ready for job submission (one probe
    job, :data:`PROBE_JOB`, has run). ``node_env``: extra variables for node ``i`` only (e.g. its own
    ``MEDGAN_CACHE_DIR``, as separate machines would have). The dashboard (Jobs API) is slow to start on 2 loaded cores:
    ``dashboard=False`` when a test does not need it.
    """
    cluster = start_cluster(nodes, num_cpus, dashboard, s3_env, node_env)
    try:
        with cluster.activated():
            yield cluster
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- one per session

#: Bucket of the session's S3 server (:func:`shared_cluster`), created empty.
BUCKET = "medgan-multinode"


@contextlib.contextmanager
def moto_s3(aws_dir: Path, secret: str = "ray-cluster-dummy-secret") -> Iterator[dict[str, str]]:
    """A real S3-protocol server (moto, threaded, on 127.0.0.1) with :data:`BUCKET`; yields the
    ``AWS_*`` environment that reaches it (config/credential files pointed at nothing in
    ``aws_dir``, so no profile of this machine is read)."""
    import boto3
    import moto.server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": str(aws_dir / "no-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "no-creds")}
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                     aws_secret_access_key=secret, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()


@dataclass
class SharedCluster:
    """What :func:`shared_cluster` yields: the 2-node cluster (1 CPU per node, dashboard up),
    the ``AWS_*`` environment of its S3 server (every node has it), and each node's own shard
    cache (``MEDGAN_CACHE_DIR``, as separate machines would have)."""

    cluster: RayCluster
    s3_env: dict[str, str]
    caches: list[Path]


_SHARED = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def shared_cluster(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    """ONE real 2-node loopback Ray cluster (with the Jobs API) and one moto S3 server for the
    whole session, started when a test first asks for it and stopped after the last test
    module that uses it (not at the end of the session: idle Ray processes would take CPU
    from the tests after it). A test module activates it for its tests with
    ``with shared.cluster.activated(): ...`` (``RAY_ADDRESS`` + the cluster's environment in
    this process) and calls :meth:`RayCluster.heal` first; it must leave the nodes running.
    """
    caches = [tmp_path_factory.mktemp(f"cache-node{i}") for i in range(2)]
    with moto_s3(tmp_path_factory.mktemp("aws")) as s3_env:
        c = start_cluster(nodes=2, num_cpus=1, dashboard=True, s3_env=s3_env,
                          node_env={i: {"MEDGAN_CACHE_DIR": str(d)} for i, d in enumerate(caches)})
        users = [i for i, it in enumerate(request.session.items)
                 if "shared_cluster" in getattr(it, "fixturenames", ())]
        request.config.stash[_SHARED] = {"cluster": c, "last": max(users, default=-1)}
        try:
            yield SharedCluster(c, s3_env, caches)
        finally:
            c.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """Stop the shared cluster once the module of its last user is torn down."""
    yield
    state = item.config.stash.get(_SHARED, None)
    if not state or state.get("stopped"):
        return
    items = item.session.items
    idx = items.index(item) if item in items else -1
    if idx >= state["last"] and (nextitem is None or nextitem.module is not item.module):
        state["cluster"].stop()
        state["stopped"] = True
