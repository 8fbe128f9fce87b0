"""Shared helpers: the tiny layout with hand-picked ids, used by the pure unit tests; and, for the
integration and GPU tests, the embedded default config and its toy assets (built once, cached in
.assets/toy). Every test leaves the process environment as it found it, and the session leaves no
process of its own behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from wavalign.layout import SpeechLayout

ROOT = Path(__file__).resolve().parents[1]
# Ray 2.60 clusters require their token (~/.ray/auth_token, written by `ray start` or a local
# ray.init); a driver or CLI sends it in token mode. Set before anything imports ray (Ray reads it
# once), for this process and every driver the tests start, as an operator's shell would have it.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def cfg():
    from wavalign.config_file import read_config

    return read_config(ROOT / "pipeline.yaml", [f"toy.assets_dir={ROOT / '.assets' / 'toy'}"])


@pytest.fixture(scope="session")
def toy_assets(cfg):
    from wavalign.toy.assets import ensure_toy_assets

    return ensure_toy_assets(cfg.toy, cfg.model.layout)


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
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


def pytest_sessionfinish(session, exitstatus):
    """Processes this session started and did not stop (a Ray node, a server, an engine) are stopped
    here, and named, so that they cannot slow or break whatever runs next on the machine."""
    import psutil

    deadline = time.monotonic() + 15  # a stopping Ray node takes a moment to take its workers along
    while (left := [p for p in psutil.Process().children(recursive=True) if _alive(p)]) and time.monotonic() < deadline:
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
