"""Failpoints: faults injected at named points of the real code, so fault tests drive one known path
instead of racing a timer (kill -9 "somewhere in step 2").

Off unless WAVALIGN_FAILPOINTS names a JSON file, {point: action}, which a test may write (atomically)
at any time while a run goes (anything else there is an error naming the file). Each armed point fires once,
at its next hit in any process of the run
(a worker, its replacement, the driver): the first process to reach it claims it by creating
`<file>.<point>.fired`. Actions:
    exit     the process dies on the spot, as under kill -9 (os._exit)
    raise    the call fails with FailpointError
    sigterm  the process sends itself SIGTERM (the driver then checkpoints and stops)
    corrupt  failpoint() returns True and the caller spoils its own output as its point says
    pause    the process writes its pid into the `.fired` file and waits there until `<file>.<point>.resume`
             exists (at most PAUSE_LIMIT_S): a test does what it needs at that moment (kill -9 that
             process, or another one) and then lets the run go on

Points: rollout.start, rollout.generate, rollout.update_weights (RolloutWorker), reward.score, reward.counters,
reward.scores (RewardWorker; corrupt: every other score of every reward function is NaN, as a
buggy function's would be), learner.train_step (LearnerWorker), driver.learning (the learner step is
under way: the rollout and reward workers are idle), driver.step_done (after a step's outputs are
written), driver.finishing (the run's outputs are complete; the export and the workers' shutdown
follow). connect_ray forwards the
variable to the job's Ray workers. Standard library only; unset, a hit costs one environment lookup.
"""

from __future__ import annotations

import json
import os
import signal
import time

ENV = "WAVALIGN_FAILPOINTS"
ACTIONS = ("exit", "raise", "sigterm", "corrupt", "pause")
PAUSE_LIMIT_S = 300  # a test that never resumes a paused run does not hang it for good


class FailpointError(RuntimeError):
    pass


def failpoint(point: str) -> bool:
    """Fire the action armed at `point`, once per run; nothing when none is armed. True only when a
    `corrupt` action fired (the caller spoils its output)."""
    path = os.environ.get(ENV)
    if not path:
        return False
    try:
        with open(path, encoding="utf-8") as spec:
            armed = json.load(spec)
    except FileNotFoundError:
        return False  # not written yet: nothing armed
    except (OSError, ValueError) as err:
        raise FailpointError(f"{ENV}: {path}: not a readable JSON file ({err})") from None
    if not isinstance(armed, dict):
        raise FailpointError(f"{ENV}: {path}: expected a JSON object {{point: action}}, got {armed!r}")
    action = armed.get(point)
    if action is None:
        return False
    if action not in ACTIONS:
        raise FailpointError(f"{ENV}: {point}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
    try:
        claim = os.open(f"{path}.{point}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False  # fired already, here or in another process
    if action == "pause":
        os.write(claim, str(os.getpid()).encode())
    os.close(claim)
    if action == "pause":
        _wait_for(f"{path}.{point}.resume")
        return False
    if action == "exit":
        os._exit(17)
    if action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        return False
    if action == "corrupt":
        return True
    raise FailpointError(f"failpoint {point}: injected failure")


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def forwarded_env() -> dict[str, str]:
    """What Ray workers need in their environment for the driver's failpoints to reach them."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}
