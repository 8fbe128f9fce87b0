"""Tests whose cost is one long subprocess that needs nothing from the session (a server that takes
most of a minute to come up, a benchmark script on a Ray instance of its own) have it started as
soon as the session knows they will run: it then overlaps with the tests that go first and leave a
core idle (the pure unit tests, the judge-deadline tests), and the test itself only checks what it
produced. A test module names such subprocesses in PRESTART: {test name: starter}, where
starter(toy_assets, folder) returns the started Background (its toy assets must be built already:
while they build, nothing else starts). A test that finds none started starts its own.

Only a session of one process (`pytest tests`) starts them early. Under `pytest -n 2` (the README's
command) the workers collect the tests, not the controller, so each such test starts its subprocess
when it runs (the benchmark then joins the session's cluster): the two workers keep both cores busy
anyway (~96% busy from the first test to the last, sampled every second), so an early start would
not shorten the session.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Background:
    process: subprocess.Popen
    log: Path
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the port a server listens on

    @classmethod
    def start(
        cls, command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None, without=(), **info
    ) -> Background:
        """env: variables added to this process's; without: names left out."""
        environment = {key: value for key, value in os.environ.items() if key not in without}
        with open(log, "w") as out:
            process = subprocess.Popen(
                command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**environment, **(env or {})}, text=True
            )
        return cls(process, log, info)

    def finish(self, timeout: float) -> tuple[int, str]:
        """Its exit code and output, once it has ended (killed at the deadline: a failure to see)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(60)
        return self.process.returncode, self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


_started: dict[str, Background] = {}


def start_for(items, toy_assets, folder: Path) -> None:
    """Each selected test's PRESTART subprocess, once."""
    for item in items:
        starter = getattr(item.module, "PRESTART", {}).get(item.name)
        if starter is not None and item.name not in _started:
            folder.mkdir(parents=True, exist_ok=True)
            _started[item.name] = starter(toy_assets, folder)


def take(test_name: str) -> Background | None:
    """The subprocess started for this test, if one was (it is the test's from now on)."""
    return _started.pop(test_name, None)


def stop_all() -> None:
    """Those that no test took (an interrupted session)."""
    while _started:
        _started.popitem()[1].stop()
