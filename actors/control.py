"""Operator control of a running job: a small named Ray worker (`RunControl`) that holds requests,
and the command that sends them:

    python launch.py scale --workers N [--run NAME] [--address ADDR]
    python launch.py status [--run NAME] [--address ADDR]

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
        self._status = {**self._status, **status}

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
    parser = _parser("scale", "Resize a running job's rollout pool.")
    parser.add_argument("--workers", type=int, required=True, help="rollout workers wanted")
    args = parser.parse_args(argv)
    control = _control(args)
    if control is None:
        return 1
    import ray

    status = ray.get(control.request_rollout_workers.remote(args.workers), timeout=60)
    print(f"requested {args.workers} rollout workers for run {args.run!r} (applied between steps); now: {status}")
    return 0


def status_main(argv: list[str]) -> int:
    """The running job's last step (step, reward, λ, losses, tokens/s, sync, ETA), its workers and
    their states, and where its outputs go."""
    args = _parser("status", "Where a running job stands.").parse_args(argv)
    control = _control(args)
    if control is None:
        return 1
    import ray

    status = ray.get(control.status.remote(), timeout=60)
    print(status_text(args.run, status), flush=True)
    return 0


def status_text(run: str, status: dict) -> str:
    """
    >>> print(status_text("r", {"progress": "step 2/4 | reward 3.00", "storage": "/runs/r-1",
    ...                         "workers": {"rollout": {"rollout-a-0": "idle"}, "reward": {}}}))
    run 'r': step 2/4 | reward 3.00
      rollout workers (1): rollout-a-0 idle
      reward workers (0): -
      outputs: /runs/r-1
    >>> print(status_text("r", {}))
    run 'r': starting (no step finished yet)
    """
    lines = [f"run {run!r}: {status.get('progress', 'starting (no step finished yet)')}"]
    for pool, states in status.get("workers", {}).items():
        shown = ", ".join(f"{name} {state}" for name, state in states.items()) or "-"
        lines.append(f"  {pool} workers ({len(states)}): {shown}")
    if "storage" in status:
        lines.append(f"  outputs: {status['storage']}")
    return "\n".join(lines)


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"launch.py {command}", description=description)
    parser.add_argument("--run", default="wavalign", help="the job's run.name")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: the local cluster)")
    return parser


def _control(args):
    """The run's control worker on the cluster, or None (said) when no such job runs there."""
    import ray

    from wavalign.ports import unreachable
    from wavalign.ray_join import ClusterUnreachable, join_cluster

    if problem := unreachable(args.address, "--address"):
        print(f"error: {problem}", flush=True)
        return None
    try:
        join_cluster(args.address, namespace=NAMESPACE, logging_level="ERROR")
    except ClusterUnreachable as err:
        print(f"error: {err}", flush=True)
        return None
    try:
        return ray.get_actor(control_name(args.run), namespace=NAMESPACE)
    except ValueError:
        print(f"error: no running job named {args.run!r} on this cluster", flush=True)
        return None
