"""The suite's xdist scheduling (tests/scheduling.py) on a small suite of its own: a worker that
crashes in a later unit is replaced and the session ends with the crash as one failure."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CONFTEST = """
from tests.scheduling import UnitScheduling

def pytest_xdist_make_scheduler(config, log):
    return UnitScheduling(config, log, lambda nodeid: nodeid.split("::")[0])
"""
# test_a keeps one worker busy while the other takes b to f, then crashes once in g: its finished
# units b to f were queued again by xdist 3.8, and the session hung.
MODULE = """
import os, signal, time

def test_1(): time.sleep({pause})
def test_2():
    if {crash} and not os.path.exists("crashed"):
        open("crashed", "w").close()
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep({pause})
def test_3(): time.sleep({pause})
"""


def test_a_worker_crash_in_a_later_unit_fails_that_test_and_the_session_ends(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name in "abcdefg":
        (tmp_path / f"test_{name}.py").write_text(MODULE.format(pause=2 if name == "a" else 0.1, crash=name == "g"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "."],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1 and "crashed while running 'test_g.py::test_2'" in done.stdout, done.stdout[-3000:]
    assert summary.startswith("1 failed, 21 passed"), summary  # every test ran; the crashed one again
