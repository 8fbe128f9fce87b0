"""The weight sync's control plane, the same for every transfer backend (object_store on CPU, nccl
or ipc on GPUs; the transports are vLLM's weight-transfer engines, actors/weight_transfer.py).

Who runs what:
- driver: `WeightSync.sync(version, workers)` after each learner step, on every learner rank, and
  `bring_up(version, worker)` for a rollout worker that starts later (grown, or a replacement): only
  metadata, versions and deadlines pass through it, never weights;
- every learner rank: `LearnerSync` holds vLLM's trainer engine over the policy's (name, tensor)
  stream (`DeepSpeedEngine.full_weights`, gathered one parameter at a time under ZeRO-3, so every rank
  iterates it); rank 0 sends, through
- `RolloutClient`: vLLM's four-method `VLLMWeightSyncClient` protocol over the rollout workers' Ray
  handles, each call with a deadline; a worker that fails or stays silent is dropped from the round
  and named, the others finish it (never a half-updated engine: a worker that did not finish is
  removed by the pool);
- each rollout worker (`RolloutWorker.weight_transfer_*`) hands the phases to its vLLM engine.

The transfer group is fixed at connect (nccl: one NCCL group of the learner and every worker's vLLM
process): when the pool's membership changes, the learner connects again before it sends. NCCL and
CUDA-IPC calls cannot be interrupted, so after a stall the group is unusable: the next sync connects
again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from actors.worker_pool import WorkerError, first_line
from wavalign.messages import SyncReport
from wavalign.ports import free_port

Worker = tuple[str, Any]  # (name, Ray handle)
GPU_BACKENDS = ("nccl", "ipc")
SYNC_PHASES = ("pack", "transfer", "load", "finish")  # the object_store backend's split of a sync (SendTimings)


class WeightSyncError(WorkerError):
    pass


def call_workers(
    workers: Sequence[Worker],
    what: str,
    submit: Callable[[str, Any], ray.ObjectRef],
    timeout_s: float,
    timeout_key: str = "rollout.update_timeout_s",
) -> tuple[dict[str, Any], dict[str, str]]:
    """submit(name, handle) on every worker at once, then wait for all of them until the deadline.
    Returns (results by name, failures by name: why each failed or stayed silent)."""
    return wait_workers({submit(name, handle): name for name, handle in workers}, what, timeout_s, timeout_key)


def wait_workers(
    pending: dict[ray.ObjectRef, str], what: str, timeout_s: float, timeout_key: str = "rollout.update_timeout_s"
) -> tuple[dict[str, Any], dict[str, str]]:
    """The answers of calls already submitted ({ref: worker name}), waited for until the deadline."""
    pending = dict(pending)
    deadline = time.monotonic() + timeout_s
    results, failures = {}, {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            failures.update(
                {name: f"no answer to {what} within {timeout_key}={timeout_s:g}s" for name in pending.values()}
            )
            break
        name = pending.pop(ready[0])
        try:
            results[name] = ray.get(ready[0])
        except (RayActorError, RayTaskError) as err:
            failures[name] = f"{what} failed: {first_line(err)}"
    return results, failures


def named_failures(failures: dict[str, str]) -> str:
    """One line naming every worker that failed and why."""
    return "; ".join(f"{name}: {why}" for name, why in failures.items())


def run_bounded(fn: Callable[[], Any], timeout_s: float, timeout_error: Callable[[], Exception]) -> Any:
    """fn() on a daemon thread, waited for at most timeout_s. NCCL and CUDA-IPC calls cannot be
    interrupted: on a stall the thread stays blocked (a daemon, so it does not hold up process exit)
    and timeout_error() is raised here instead. The thread runs on the caller's CUDA device."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else None
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            if device is not None:
                torch.cuda.set_device(device)  # the current device is per thread
            outcome["value"] = fn()
        except BaseException as err:  # handed to the waiting caller
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="wavalign-weight-sync", daemon=True).start()
    if not done.wait(timeout_s):
        raise timeout_error()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def nccl_rank_offsets(workers: int, ranks_per_worker: int = 1) -> tuple[list[int], int]:
    """The NCCL group of a sync: the sending learner is rank 0 and rollout worker i's vLLM ranks start
    at 1 + i * ranks_per_worker (its tensor-parallel size; 1 here). Returns (offsets, world size).

    >>> nccl_rank_offsets(3)
    ([1, 2, 3], 4)
    >>> nccl_rank_offsets(2, ranks_per_worker=2)
    ([1, 3], 5)
    """
    if workers < 1 or ranks_per_worker < 1:
        raise ValueError(f"need >= 1 worker of >= 1 rank, got {workers} x {ranks_per_worker}")
    return [1 + i * ranks_per_worker for i in range(workers)], 1 + workers * ranks_per_worker


def per_worker_init_info(init_info: dict, names: Sequence[str], rank_offsets: Sequence[int] | None) -> dict[str, dict]:
    """Each worker's init payload. vLLM's nccl trainer engine writes rank_offset 1 (one engine); with
    several independent engines each gets its own offset. Other payloads go out unchanged.

    >>> per_worker_init_info({"world_size": 3, "rank_offset": 1}, ["a", "b"], [1, 2])["b"]
    {'world_size': 3, 'rank_offset': 2}
    """
    if rank_offsets is None:
        return {name: init_info for name in names}
    if len(rank_offsets) != len(names):
        raise ValueError(f"{len(rank_offsets)} rank offsets for {len(names)} workers")
    return {name: {**init_info, "rank_offset": offset} for name, offset in zip(names, rank_offsets)}


class RolloutClient:
    """vLLM's `VLLMWeightSyncClient` protocol (structural: four methods, plain dicts) over the Ray
    handles of RolloutWorkers, each call with a deadline. A worker that fails or stays silent leaves
    the round (named in `failed`); the round goes on with the others, to its end even with none left,
    so the learner's side of it is complete (object_store: every chunk is in the store, for the
    workers that come up next). nccl: a silent peer stalls the broadcast itself, which the learner's
    deadline ends."""

    def __init__(self, workers: Sequence[Worker], timeout_s: float, rank_offsets: Sequence[int] | None = None) -> None:
        self.workers, self.timeout_s, self.rank_offsets = list(workers), timeout_s, rank_offsets
        self.version = 0  # the policy version that the next finish_weight_update commits
        self.failed: dict[str, str] = {}
        self.finished: dict[str, dict] = {}  # name -> what each worker said when it finished
        self.phase = "connect"

    def _call(self, what: str, submit: Callable[[str, Any], ray.ObjectRef]) -> dict[str, Any]:
        return self._submit(what, submit)()

    def _submit(self, what: str, submit: Callable[[str, Any], ray.ObjectRef]) -> Callable[[], dict[str, Any]]:
        """Sends the call to every worker now; the returned function waits for the answers."""
        pending = {submit(name, handle): name for name, handle in self.workers}

        def answers() -> dict[str, Any]:
            self.phase = what
            results, failures = wait_workers(pending, what, self.timeout_s)
            self.failed.update(failures)
            self.workers = [(name, handle) for name, handle in self.workers if name not in failures]
            return results

        return answers

    def waiting_on(self) -> str:
        return f"rollout workers in {self.phase}: {', '.join(name for name, _ in self.workers) or 'none'}"

    def new_round(self) -> None:
        self.failed, self.finished = {}, {}

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        payloads = per_worker_init_info(init_info, [name for name, _ in self.workers], self.rank_offsets)
        self._call("init_weight_transfer", lambda name, h: h.weight_transfer_init.remote(payloads[name]))

    def start_weight_update(self) -> None:
        self._call("start_weight_update", lambda name, h: h.weight_transfer_start.remote())

    def update_weights(self, update_info: dict | list[dict]) -> dict[str, Any]:
        return self.submit_update(update_info)()

    def submit_update(self, update_info: dict | list[dict]) -> Callable[[], dict[str, Any]]:
        """update_weights without waiting: the sender packs the next chunk while the workers load this
        one. The returned function waits for their answers (each worker's transfer and load seconds)."""
        return self._submit("update_weights", lambda name, h: h.weight_transfer_update.remote(update_info))

    def worker_nodes(self) -> dict[str, str]:
        """The Ray node of each worker (object_store: which of them can read the learner's region)."""
        return self._call("node_id", lambda name, h: h.node_id.remote())

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = self.version
        self.finished = self._call("finish_weight_update", lambda name, h: h.weight_transfer_finish.remote(version))

    def shutdown_weight_transfer_engine(self) -> None:
        self._call("shutdown_weight_transfer", lambda name, h: h.weight_transfer_shutdown.remote())


class LearnerSync:
    """One learner rank's side of the sync: vLLM's trainer engine for the configured backend, over the
    policy's weights, connected to a set of rollout workers (again whenever that set changes)."""

    def __init__(
        self,
        backend: str,
        rank: int,
        weights: Callable,
        *,
        chunk_bytes: int,
        timeout_s: float,
        packed: bool = True,
        region_dir: str = "/dev/shm",
    ) -> None:
        self.backend, self.rank, self.weights = backend, rank, weights
        self.chunk_bytes, self.timeout_s, self.packed = chunk_bytes, timeout_s, packed
        self.region_dir = region_dir
        self.engine, self.client, self.connected = None, None, None
        self.sent_version = 0
        self.lock = threading.Lock()  # a late worker's bring-up waits for a sync under way

    @property
    def is_sender(self) -> bool:
        return self.rank == 0

    def sync(self, version: int, workers: Sequence[Worker]) -> SyncReport:
        """Every rank calls it; rank 0's report counts. Connects first when the workers changed."""
        with self.lock:
            names = [name for name, _ in workers]
            if self.engine is None or names != self.connected:
                self._connect(workers)  # a new round: a worker that fails to connect is named in it
            else:
                self.client.new_round()
            self.client.version = version
            self._bounded(f"sync to policy version {version}", self.engine.send_weights)
            self.sent_version = version
            return self._report()

    def bring_up(self, worker: Worker) -> dict:
        """The last version sent, to one new worker (rank 0, object_store: the chunks are still in the
        store; the parameters are not read, so this may run while the learner steps). Returns what
        the worker said when it finished, or raises naming it."""
        with self.lock:
            if self.backend in GPU_BACKENDS:
                raise WeightSyncError(
                    f"{worker[0]}: {self.backend} transfer groups are fixed at connect; a worker "
                    "that starts after the first sync joins at the next one"
                )
            if self.engine is None or not self.engine.last_chunks:
                raise WeightSyncError(f"{worker[0]}: no complete version to bring it up with yet")
            client = RolloutClient([worker], self.timeout_s)
            client.version = self.sent_version
            client.init_weight_transfer_engine({})  # object_store: no group to join
            self.engine.replay(client)  # each call to the worker has its deadline
            if worker[0] in client.failed:
                raise WeightSyncError(f"{worker[0]}: {client.failed[worker[0]]}")
            return client.finished[worker[0]]

    def release_region(self) -> None:
        """Frees the object_store weight region's shared memory without a word to the workers (the run
        ends and they go too; close() would wait on each of them)."""
        region = getattr(self.engine, "region", None)
        if region is not None:
            region.remove()

    def close(self) -> None:
        """Release the transfer group on both sides. After a stall it is left alone: its NCCL calls
        may still be blocked, and tearing it down would block too."""
        if self.engine is None:
            return
        engine, self.engine = self.engine, None
        if self.is_sender:
            self.client.shutdown_weight_transfer_engine()
        self._bounded("shutdown", engine.shutdown)

    def _connect(self, workers: Sequence[Worker]) -> None:
        from actors.weight_transfer import trainer_init, trainer_init_info

        if self.engine is not None:
            try:
                self.close()
            except WeightSyncError:
                pass  # a worker of the old set is gone; the new group does not need it
        offsets, world_size = nccl_rank_offsets(len(workers)) if self.backend == "nccl" else (None, 0)
        address, port = (ray.util.get_node_ip_address(), free_port()) if self.backend == "nccl" else ("", 0)
        info = trainer_init_info(
            self.backend,
            self.rank,
            self.chunk_bytes,
            packed=self.packed,
            address=address,
            port=port,
            world_size=world_size,
            region_dir=self.region_dir,
        )
        self.client = RolloutClient(workers, self.timeout_s, offsets)
        self.connected = [name for name, _ in workers]
        self.engine = self._bounded(f"connect ({self.backend})", lambda: trainer_init(info, self.client, self.weights))

    def _report(self) -> SyncReport:
        timings = getattr(self.engine, "timings", None)  # vLLM's own engines (nccl, ipc) report no split
        phases = {k: getattr(timings, k) for k in SYNC_PHASES} if timings else {}
        return SyncReport(phases, getattr(timings, "bytes", 0), dict(self.client.finished), dict(self.client.failed))

    def _bounded(self, what: str, fn: Callable[[], Any]) -> Any:
        """fn(), on the GPU backends within rollout.update_timeout_s as a whole (their collectives
        cannot be interrupted); with object_store each call to a worker has that deadline already, and
        the rest is local work."""

        def stalled() -> Exception:
            where = self.client.waiting_on() if self.is_sender and self.client else "the other learner ranks"
            return WeightSyncError(
                f"weight sync: {what}: no progress within rollout.update_timeout_s={self.timeout_s:g}s; {where}"
            )

        try:
            return run_bounded(fn, self.timeout_s, stalled) if self.backend in GPU_BACKENDS else fn()
        except BaseException:
            self.engine, self.connected = None, None  # unusable after a failure: connect again next time
            raise
