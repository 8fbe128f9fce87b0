"""Operator control of a running job: a small named Ray worker (`RunControl`) that holds requests,
and the command that sends them:

    python launch.py scale --workers N [--run NAME] [--address ADDR]

The driver applies a pending request between steps (`apply_requests`), so the rollout pool grows or
shrinks without restarting the job. One control worker per run name, in the "wavalign" namespace.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

NAMESPACE = "wavalign"


def control_name(run_name: str) -> str:
    return f"control-{run_name}"


class RunControl:
    """Requests from operators, and what the driver last reported (plain class; a Ray worker at the call site)."""

    def __init__(self) -> None:
        self._rollout_workers: int | None = None
        self._status: dict = {}

    def request_rollout_workers(self, count: int) -> dict:
        if count < 1:
            raise ValueError(f"--workers must be >= 1, got {count}")
        self._rollout_workers = count
        return self._status

    def take_rollout_request(self) -> int | None:
        count, self._rollout_workers = self._rollout_workers, None
        return count

    def report(self, status: dict) -> None:
        self._status = status

    def status(self) -> dict:
        return self._status


def start_control(run_name: str):
    """The run's control worker (created by the driver; dies with the job)."""
    import ray

    return ray.remote(RunControl).options(name=control_name(run_name), namespace=NAMESPACE, num_cpus=0).remote()


def apply_requests(control, pool, log: Callable[[str], None] = print, timeout: float = 60) -> None:
    """Between steps: resize the pool if an operator asked, then report the pool's state."""
    import ray

    count = ray.get(control.take_rollout_request.remote(), timeout=timeout)
    if count is not None and count != len(pool.members):
        log(f"operator request: rollout workers {len(pool.members)} -> {count}")
        pool.start_resize(count)  # new workers join the batches once up, with the current weights
    control.report.remote({"rollout_workers": pool.states(), "policy_version": pool.version})


def scale_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py scale", description="Resize a running job's rollout pool.")
    parser.add_argument("--workers", type=int, required=True, help="rollout workers wanted")
    parser.add_argument("--run", default="wavalign", help="the job's run.name")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: the local cluster)")
    args = parser.parse_args(argv)
    import ray

    ray.init(address=args.address, namespace=NAMESPACE, logging_level="ERROR")
    try:
        control = ray.get_actor(control_name(args.run), namespace=NAMESPACE)
    except ValueError:
        print(f"error: no running job named {args.run!r} on this cluster", flush=True)
        return 1
    status = ray.get(control.request_rollout_workers.remote(args.workers), timeout=60)
    print(f"requested {args.workers} rollout workers for run {args.run!r} (applied between steps); now: {status}")
    return 0
