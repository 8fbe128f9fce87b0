"""One Ray cluster for the whole test session, however many pytest-xdist workers run it. An idle
cluster of this kind costs about 7 CPU-s a minute (its GCS, raylet, dashboard and agents), so a
cluster per worker cost the suite a core-minute or more; one shared by both workers does not.

The controller of `pytest -n` names a folder for it (SHARED_ENV, before its workers start: they
inherit it). The first worker whose tests need the cluster starts it and records it there (RECORD:
its addresses, and the processes and folders to remove); the other workers join what the record
says. The controller stops it once every worker is done (`stop_shared`). Without workers, the
session's one process starts and stops its own (tests/integration/conftest.py).

Light imports only: the controller loads this module."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

SHARED_ENV = "WAVALIGN_TEST_CLUSTER_DIR"
RECORD = "cluster.json"
_named: list[Path] = []  # the folder this process named (a process that inherited one stops nothing)


def share_with_workers() -> None:
    """Controller: name the shared cluster's folder for the workers it is about to start."""
    _named.append(Path(tempfile.mkdtemp(prefix="wavalign-cluster-")))
    os.environ[SHARED_ENV] = str(_named[-1])


def shared_folder() -> Path | None:
    folder = os.environ.get(SHARED_ENV)
    return Path(folder) if folder else None


def joined(start: Callable[[Path], dict]) -> dict:
    """Worker: the shared cluster's record, written by `start(folder)` (which returns it: JSON, with
    "pids" and "folders" for `stop_recorded`) if no worker has started the cluster yet."""
    folder = shared_folder()
    assert folder is not None, f"{SHARED_ENV} is not set: no shared cluster in this session"
    with _locked(folder / "lock"):  # the other workers wait while one starts it
        record = folder / RECORD
        if not record.exists():
            started = start(folder)
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(started))
            tmp.replace(record)
        return json.loads(record.read_text())


def stop_shared() -> None:
    """Controller, at the session's end: the shared cluster's processes stopped, its folders gone."""
    if not _named:
        return
    folder = _named.pop()
    record = folder / RECORD
    if record.exists():
        stop_recorded(json.loads(record.read_text()))
    shutil.rmtree(folder, ignore_errors=True)


def stop_recorded(record: dict) -> None:
    """A started cluster's processes stopped (in the record's order: the second node first, then the
    head) and its folders removed."""
    for pid in record["pids"]:
        stop_process_tree(pid)
    for path in record["folders"]:
        shutil.rmtree(path, ignore_errors=True)


def shared_cluster_processes() -> set[int]:
    """The pids of the shared cluster's processes, as this process sees them now (none when there is
    none, or after `stop_shared`)."""
    import psutil

    folder = shared_folder()
    if folder is None or not (folder / RECORD).exists():
        return set()
    pids = set()
    for pid in json.loads((folder / RECORD).read_text())["pids"]:
        try:
            pids |= {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
        except psutil.Error:
            pass
    return pids


def stop_process_tree(pid: int, grace: float = 5) -> None:
    """SIGTERM to the process group that `pid` leads (a `ray start --block` node, started in a session
    of its own, stops its processes on it), then, after `grace` seconds, SIGKILL to whatever of its
    tree is left (Ray's own shutdown can take half a minute)."""
    import psutil

    try:
        leader = psutil.Process(pid)
        tree = [leader, *leader.children(recursive=True)]
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, psutil.Error):
        return
    _, left = psutil.wait_procs(tree, timeout=grace)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=30)


@contextmanager
def _locked(path: Path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
