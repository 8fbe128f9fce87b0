"""Joining a named Ray cluster within a deadline. ray.init retries a cluster that does not let the
driver in (a token it lacks, a port that is no GCS) for minutes and says little; past the deadline
the process says so in one line and ends (exit 2): nothing of a run has started by then. (An
address where nothing answers at all is caught earlier, in one line: wavalign.ports.unreachable.)"""

from __future__ import annotations

import os
import sys
import threading

JOIN_TIMEOUT_S = 90.0


class ClusterUnreachable(RuntimeError):
    """ray.init gave up on the named cluster: one line naming it."""


def join_cluster(address: str, join_timeout_s: float = JOIN_TIMEOUT_S, **init_kwargs) -> None:
    """ray.init(address=address, **init_kwargs), ended by the deadline if it has not returned."""
    import ray

    watchdog = threading.Timer(join_timeout_s, _timed_out, (address, join_timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        ray.init(address=address, **init_kwargs)
    except ConnectionError as err:
        raise ClusterUnreachable(f"Ray cluster {address}: {str(err).splitlines()[0]}") from None
    finally:
        watchdog.cancel()


def _timed_out(address: str, timeout_s: float) -> None:
    print(
        f"error: Ray cluster {address}: not joined within {timeout_s:g}s; its GCS does not accept this "
        "driver (a cluster with token authentication needs RAY_AUTH_MODE=token and its token, "
        "`ray get-auth-token`; or the port is not a Ray GCS)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(2)  # ray.init holds the main thread
