"""Shared helpers: the tiny layout with hand-picked ids, used by the pure unit tests; and, for the
integration and GPU tests, the embedded default config and its toy assets (built once, cached in
.assets/toy). Every test leaves the process environment as it found it, and the session leaves no
process of its own behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import background
from tests.session_cluster import share_with_workers, shared_cluster_processes, stop_shared
from wavalign.config_file import read_config
from wavalign.layout import SpeechLayout

ROOT = Path(__file__).resolve().parents[1]
# Ray 2.60 clusters require their token (~/.ray/auth_token, written by `ray start` or a local
# ray.init); a driver or CLI sends it in token mode. Set before anything imports ray (Ray reads it
# once), for this process and every driver the tests start, as an operator's shell would have it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# The suite runs in two pytest workers (pytest-xdist, README): two streams of tests share the 2 cores.
# torch's OpenMP threads spin at each barrier while their partner thread waits for a core, so two
# processes of 2 threads each on 2 cores take up to 15x longer per step: every process of the tests
# (this one, the drivers and Ray workers it starts) computes on one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...: a worker of `pytest -n`


TOY_SETTINGS = [f"toy.assets_dir={ROOT / '.assets' / 'toy'}"]
ASSET_BUILD_TIMEOUT_S = 1800
_background_build: dict = {}  # the asset build started at collection: process, log
_background_logs: list[Path] = []  # the folder of the subprocesses started at collection


def toy_config():
    """The embedded default, its toy assets in the project's cache."""
    return read_config(ROOT / "pipeline.yaml", TOY_SETTINGS)


def ensured_toy_assets(cfg):
    """The toy assets of `cfg`, built first when the cache lacks them."""
    from wavalign.toy.assets import ensure_toy_assets

    return ensure_toy_assets(cfg.toy, cfg.model.layout)


@pytest.fixture(scope="session")
def cfg():
    return toy_config()


@pytest.fixture(scope="session")
def toy_assets(cfg):
    if build := _background_build.get("process"):
        try:
            code = build.wait(ASSET_BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            build.kill()
            code = "timeout"
        if code != 0:
            pytest.fail(f"the toy asset build failed ({code}): {_background_build['log'].read_text()[-3000:]}")
    return ensured_toy_assets(cfg)  # the cache the build left (or built here)


# Under `pytest -n 2` (README), pytest-xdist hands each worker whole modules, so that a module's
# fixtures are set up once; modules that share a session fixture which costs a minute go to one
# worker together. The costliest go first, in this order, so that none ends the session alone
# (measured: tests/README.md).
SHARED_SESSION_FIXTURE = {"test_prepare.py": "prepared_speech", "test_ablate.py": "prepared_speech"}
COSTLIEST_FIRST = ["test_pipeline.py", "test_faults.py", "prepared_speech"]


def worker_group(nodeid: str) -> str:
    """tests/integration/test_x.py::test_y[z] -> the work unit it belongs to."""
    module = nodeid.split("::")[0].rsplit("/", 1)[-1]
    return SHARED_SESSION_FIXTURE.get(module, module)


def pytest_xdist_make_scheduler(config, log):
    from tests.scheduling import UnitScheduling

    return UnitScheduling(config, log, worker_group)


def pytest_sessionstart(session):
    """The toy assets, built before pytest-xdist's workers start (each would build its own at once);
    the folder of the Ray cluster they will share (tests/session_cluster.py)."""
    if not XDIST_WORKER and getattr(session.config.option, "numprocesses", None):
        ensured_toy_assets(toy_config())
        share_with_workers()


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected: only the tests that will run count
def pytest_collection_modifyitems(config, items):
    """The toy asset build (minutes on both cores when the cache is cold) starts in the background
    now, and the test modules that need no assets run first, while it builds: their time is mostly
    spent waiting (judge deadlines, subprocesses), so the session gains most of it. Whole modules
    move, so module fixtures are still set up once. With the assets there, the selected tests'
    long subprocesses that need nothing else start at once instead (tests/background.py)."""
    if XDIST_WORKER:  # the assets are built (pytest_sessionstart); the other worker fills idle cores
        # the collection this worker reports, whose order the scheduler keeps: the costliest first
        rank = {group: position for position, group in enumerate(COSTLIEST_FIRST)}
        items.sort(key=lambda item: rank.get(worker_group(item.nodeid), len(rank)))
        return
    needing = {item.path for item in items if "toy_assets" in item.fixturenames}
    items.sort(key=lambda item: item.path in needing)  # stable: the order within each group stays
    if needing and not config.option.collectonly and not _start_asset_build(config):
        # the assets are there: the long subprocesses that need nothing else start now (tests/background.py)
        _background_logs.append(Path(tempfile.mkdtemp(prefix="wavalign-tests-")))
        background.start_for(items, ensured_toy_assets(toy_config()), _background_logs[0])


def _start_asset_build(config) -> bool:
    """True when a build started (the assets are not ready)."""
    from wavalign.toy.cache import toy_assets_ready

    toy = toy_config()
    if toy_assets_ready(toy.toy, toy.model.layout):
        return False
    log = Path(config.rootpath) / ".assets" / "build.log"  # .assets is the project's (ignored) cache folder
    log.parent.mkdir(exist_ok=True)
    settings = [a for s in TOY_SETTINGS for a in ("--set", s)]
    _background_build["log"] = log
    with open(log, "w") as out:
        _background_build["process"] = subprocess.Popen(
            [sys.executable, "-m", "wavalign.toy", "--config", str(ROOT / "pipeline.yaml"), *settings],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return True


# Hand layout for mask tests: ids 0..9 text-ish, BOA 10, EOA 11, eos 12, pad 13, speech codes 20..29.
HAND = dict(speech_start=20, speech_end=30, boa_id=10, eoa_id=11, eos_id=12, pad_id=13)


@pytest.fixture
def hand_layout() -> SpeechLayout:
    return SpeechLayout(**HAND, interleave_ratio=(1, 10, 4, 10))


@pytest.fixture(autouse=True)
def _environment_restored():
    """What a test, or code it runs in this process (DeepSpeed writes its rendezvous variables into
    os.environ), puts into the environment is taken out afterwards: no later test or subprocess
    depends on the order the tests ran in."""
    before = dict(os.environ)
    yield
    restore_environment(before)


def restore_environment(before: dict[str, str]) -> None:
    """Only what changed is put back, never clear() and refill: adding a variable makes glibc
    reallocate the environment array, and a getenv of one of Ray's C++ threads (this process is a
    Ray driver) that reads the old array meanwhile crashes the process (SIGSEGV in getenv, seen
    once in a suite run). Removing one shifts the array in place; setting an existing one swaps a
    pointer."""
    for key in [key for key in os.environ if key not in before]:
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def pytest_sessionfinish(session, exitstatus):
    """Processes this session started and did not stop (a Ray node, a server, an engine) are stopped
    here, and named, so that they cannot slow or break whatever runs next on the machine."""
    import psutil

    if (build := _background_build.get("process")) and build.poll() is None:  # an interrupted session
        build.terminate()  # the build removes its staging folder on SIGTERM
        build.wait(60)
    background.stop_all()
    stop_shared()  # (the controller: every worker is done with it)
    for folder in _background_logs:
        shutil.rmtree(folder, ignore_errors=True)
    shared = shared_cluster_processes()  # a worker started it; the controller stops it when all are done
    deadline = time.monotonic() + 15  # a stopping Ray node takes a moment to take its workers along
    while (
        left := [p for p in psutil.Process().children(recursive=True) if p.pid not in shared and _alive(p)]
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        names = set()
        for process in left:
            try:
                names.add(" ".join(process.cmdline()[:2])[:80])
                process.kill()
            except psutil.Error:
                pass
        print(f"\nleft behind by the tests and stopped now: {len(left)} processes: {sorted(names)}")


def _alive(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
