"""Helpers for the end-to-end tests: launch.py as a subprocess on the session cluster (or submitted
with `ray job submit`), its run directory and outputs, waits on its progress, failpoints."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from driver.outputs import read_parquet
from tests.integration.conftest import RAY, ROOT
from wavalign.atomic import write_text_atomic
from wavalign.failpoints import ENV as FAILPOINTS_ENV

# The learner computes on one thread, as every process of the tests does (tests/conftest.py: two
# streams of tests share the cores).
ONE_THREAD = {"learner.torch_threads": "1"}
# Every run of these tests: 4 steps of the embedded default, per-modality gradient norms on, so that
# those columns are filled; no evaluation (the main job's test checks it: a run evaluates before
# its first step too, seconds that these runs need not spend).
DEFAULT_SETS = {
    "run.steps": "4",
    "train.eval_every": "0",
    "train.checkpoint_every": "2",
    "learner.grad_norm_every": "1",
    **ONE_THREAD,
}


def launch_args(root: Path, name: str, assets, extra: dict[str, str] | None = None) -> list[str]:
    sets = {
        "run.name": name,
        "run.output_dir": str(root),
        "toy.assets_dir": str(assets.root),
        **DEFAULT_SETS,
        **(extra or {}),
    }
    return ["--config", "pipeline.yaml", *set_args(sets)]


def set_args(sets: dict[str, str]) -> list[str]:
    """--set key=value, for each."""
    return [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]


class Job:
    """launch.py in a subprocess joined to the session's cluster, its output in a log file."""

    def __init__(self, log_path: Path, args: list[str], address: str | None, env: dict[str, str] | None = None) -> None:
        """address None: launch.py alone, as the README's command runs it (a local cluster of its own)."""
        self.log_path = log_path
        joins = ["--address", address] if address else []
        environment = {key: value for key, value in os.environ.items() if address or key != "RAY_ADDRESS"}
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "launch.py", *args, *joins],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env={**environment, **(env or {})},
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text()

    def finish(self, timeout: float = 600) -> str:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert self.process.returncode == 0, self.output()[-4000:]
        return self.output()

    def kill(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait(60)


class SubmittedJob(Job):
    """`ray job submit` of launch.py to a cluster's job server (the operator's path: the job finds its
    cluster through RAY_ADDRESS, and the CLI sends the cluster's token: RAY_AUTH_MODE, set by
    tests/conftest.py); the CLI follows the job's output until it ends. `env`: the job's runtime_env
    env_vars (its driver's and its workers')."""

    def __init__(
        self,
        job_server: str,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        submission_id: str | None = None,
        program: tuple[str, ...] = ("launch.py",),
    ) -> None:
        """program: what the job runs with `args` (e.g. ("-m", "wavalign.prepare"))."""
        self.log_path, self.job_server, self.submission_id = log_path, job_server, submission_id
        command = f"cd {shlex.quote(str(ROOT))} && {shlex.quote(sys.executable)} {shlex.join([*program, *args])}"
        options = ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
        options += ["--submission-id", submission_id] if submission_id else []
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [RAY, "job", "submit", "--address", job_server, *options, "--", "bash", "-c", command],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def stop(self) -> None:
        """`ray job stop`: SIGTERM to the job's driver, then (after RAY_JOB_STOP_WAIT_TIME_S) SIGKILL;
        returns once the job has stopped."""
        done = subprocess.run(
            [RAY, "job", "stop", "--address", self.job_server, str(self.submission_id)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def run_dir_of(root: Path, name: str) -> Path:
    (run_dir,) = root.glob(f"{name}-*")
    return run_dir


def metrics_rows(run_dir: Path) -> list[dict]:
    return read_parquet(run_dir / "metrics.parquet").to_pylist()  # the run may be writing it


def rollout_rows(run_dir: Path) -> list[dict]:
    return read_parquet(run_dir / "rollouts.parquet").to_pylist()


def wait_until(condition, job: Job, what: str, timeout: float = 300, poll: float = 0.2):
    """condition()'s first truthy value; the job must keep running meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert job.running(), f"the job ended while waiting for {what}: " + job.output()[-4000:]
        time.sleep(poll)
    raise TimeoutError(f"{what}: not seen within {timeout:g}s\n{job.output()[-3000:]}")


def rows_so_far(root: Path, name: str) -> list[dict]:
    found = list(root.glob(f"{name}-*/metrics.parquet"))
    return metrics_rows(found[0].parent) if found else []


class Failpoints:
    """The run's failpoint file (wavalign.failpoints): arm one point at a time while the run goes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "failpoints.json"
        self.armed: dict[str, str] = {}
        write_text_atomic(self.path, "{}")

    @property
    def env(self) -> dict[str, str]:
        return {FAILPOINTS_ENV: str(self.path)}

    def arm(self, point: str, action: str) -> None:
        self.armed[point] = action
        write_text_atomic(self.path, json.dumps(self.armed))

    def fired(self, point: str) -> bool:
        return Path(f"{self.path}.{point}.fired").exists()

    def paused_pid(self, point: str) -> int | None:
        """The process held at a `pause` point, once it is there."""
        fired = Path(f"{self.path}.{point}.fired")
        text = fired.read_text() if fired.exists() else ""
        return int(text) if text else None

    def resume(self, point: str) -> None:
        Path(f"{self.path}.{point}.resume").touch()


def operator_command(address: str, returncode: int, *args: str) -> subprocess.CompletedProcess:
    """`launch.py <command> ... --address <the session cluster>`, as an operator runs it; it must exit
    with `returncode`."""
    done = subprocess.run(
        [sys.executable, "launch.py", *args, "--address", address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == returncode, done.stdout + done.stderr
    return done


def live_workers(output: str, kind: str) -> dict[str, int]:
    """name -> pid of the run's `kind` workers that came up and have not died or been removed since."""
    live: dict[str, int] = {}
    for line in output.splitlines():
        # (searched, not matched whole: a raylet message without its newline may come first)
        if up := re.search(rf"{kind} pool: ({kind}-\w+-\d+) up \(pid (\d+)\)$", line):
            live[up[1]] = int(up[2])
        for name in [n for n in live if n in line and ("died" in line or "removed" in line)]:
            del live[name]
    return live
