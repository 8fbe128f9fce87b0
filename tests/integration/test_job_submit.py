"""`ray job submit` against a `ray start --head` cluster on 127.0.0.1 runs the job to completion
(the operator's path: the job finds its cluster through RAY_ADDRESS)."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import ROOT
from wavalign.ports import free_port

RAY = str(Path(sys.executable).parent / "ray")
# Ray 2.60 clusters require a token (~/.ray/auth_token); the job CLI sends it in token mode only.
CLI_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


@pytest.fixture
def head_node(tmp_path):
    """A separate single-node cluster with its dashboard (the job server); stopped with its processes."""
    port, dashboard, agent = free_port(), free_port(), free_port()
    # Every port of its own: the test session's cluster already holds Ray's defaults (e.g. the
    # dashboard agent's 52365, without which the head takes no jobs: "No available agent").
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         "--disable-usage-stats"],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # Ready = a trivial job runs: the dashboard answers before the node's job agent has registered
        # ("No available agent to submit job, please try again later"), so `ray job list` is not enough.
        deadline = time.monotonic() + 180
        while subprocess.run([RAY, "job", "submit", "--address", address, "--", "true"], capture_output=True,
                             env=CLI_ENV).returncode != 0:
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(2)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: stopping the command stops the node's processes
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_ray_job_submit_runs_the_pipeline(head_node, tmp_path, toy_assets):
    runs = tmp_path / "runs"
    command = (f"cd {shlex.quote(str(ROOT))} && {shlex.quote(sys.executable)} launch.py --config pipeline.yaml "
               f"--set run.steps=2 --set train.eval_every=0 --set run.name=submitted --set run.output_dir={runs} "
               f"--set toy.assets_dir={toy_assets.root}")
    out = subprocess.run([RAY, "job", "submit", "--address", head_node, "--", "bash", "-c", command],
                         capture_output=True, text=True, timeout=900, env=CLI_ENV)
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]
    assert "step 2/2" in out.stdout and "done:" in out.stdout
    (run_dir,) = runs.glob("submitted-*")
    assert [r["step"] for r in pq.read_table(run_dir / "metrics.parquet").to_pylist()] == [1, 2]
