"""Each worker's log in the run's storage: `<run>/logs/<worker name>.log`.

The driver names the run's storage in the job's environment (RUN_STORAGE_ENV, set by connect_ray);
each rollout, reward and learner worker then copies its own output there as it goes: its stdout and
stderr (Python's and the C libraries': file descriptors 1 and 2) each pass through a `tee` that
appends to the log file and still writes to where Ray had them (Ray's per-worker files, the
dashboard's Logs view, the console when run.worker_logs_to_console is set). With a folder path the
file is written in place; with a URI it is written in this worker's staging folder and published
at once and then every PUBLISH_EVERY_S (so the last seconds before a worker ends may be missing
there). A process outside a run (tests, benchmarks) has no RUN_STORAGE_ENV and logs as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from wavalign.storage import RunStore

RUN_STORAGE_ENV = "WAVALIGN_RUN_STORAGE"
PUBLISH_EVERY_S = 10.0


def log_worker_output() -> None:
    """From now on, this process's output also goes to <run>/logs/<its actor name>.log (see the
    module); nothing outside a run's named Ray worker."""
    location = os.environ.get(RUN_STORAGE_ENV)
    if not location:
        return
    import ray

    name = ray.get_runtime_context().get_actor_name() if ray.is_initialized() else None
    if not name:
        return
    store = RunStore(location).private(name)  # a URI: through a staging folder of its own
    relative = f"logs/{name}.log"
    path = store.local / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        read, write = os.pipe()
        where_ray_had_it = os.dup(stream.fileno())
        # tee reads the pipe until every writer is gone (this process and its children, when they end)
        subprocess.Popen(["tee", "-a", str(path)], stdin=read, stdout=where_ray_had_it, close_fds=True)
        for fd in (read, where_ray_had_it):
            os.close(fd)
        os.dup2(write, stream.fileno())
        os.close(write)
    if store.remote:
        threading.Thread(target=_publish_forever, args=(store, relative), name="log-publisher", daemon=True).start()


def _publish_forever(store: RunStore, relative: str) -> None:
    """At once (a worker that dies young leaves its start in the storage), then every PUBLISH_EVERY_S."""
    while True:
        try:
            store.publish(relative)
        except (OSError, ValueError):  # the storage unreachable for now: the next round tries again
            pass
        time.sleep(PUBLISH_EVERY_S)
