"""GPU weight sync through vLLM's native weight transfer (vLLM 0.32): the only file that imports its
trainer-side API (`WeightTransferTrainerFactory`, `WeightSource`, the nccl/ipc trainer init infos),
always inside functions, so this module imports on CPU machines.

Selected by `rollout.weight_transfer` (resolved by `RolloutConfig.weight_transfer_backend`):
- nccl: rollout workers on other GPUs than the learner. Learner rank 0 opens one NCCL group with every
  rollout worker's vLLM process (learner = rank 0, worker i = rank 1 + i) and broadcasts the weights
  packed into buffers of `rollout.weight_bucket_mb`; vLLM loads them with its layerwise reload.
- ipc: rollout workers colocated on the learner's GPUs (`rollout.colocate`). The workers read the
  learner's tensors through CUDA IPC handles; vLLM sleeps (weights to CPU, KV cache freed) while the
  learner steps, and wakes for the sync.

Who runs what:
- driver: `GpuWeightSync` connects the learner ranks to the rollout workers once, then `sync(version)`
  per policy version (and `sleep_rollouts()` before a colocated learner step);
- every learner rank: `GpuLearnerWorker` holds a `TrainerSync`, vLLM's trainer engine over the policy's
  (name, tensor) stream, `DeepSpeedEngine.full_weights` (gathered one parameter at a time under
  ZeRO-3, so every rank iterates it; rank 0 sends);
- learner rank 0 -> rollout workers: `RolloutClient`, vLLM's four-method `VLLMWeightSyncClient`
  protocol over Ray handles;
- each rollout worker: `GpuRolloutWorker` hands the four phases to its `VLLMEngine`.

Every blocking step has a deadline (`rollout.update_timeout_s`); a stall is a `WeightSyncError` naming
the workers that did not answer. NCCL and CUDA-IPC calls cannot be interrupted, so after a failure the
transfer group is unusable: connect again. The NCCL group is fixed at connect: after the rollout pool
changes (resize, a replaced worker), connect again.

Not yet run on a GPU (no GPU in the sessions so far); tests/gpu holds the checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from actors.learner import LearnerWorker
from actors.pool import WeightSyncError
from actors.rollout import RolloutWorker
from actors.worker_pool import first_line
from wavalign.config import PipelineConfig, RolloutConfig
from wavalign.ports import free_port

GPU_BACKENDS = ("nccl", "ipc")
Worker = tuple[str, Any]  # (name, Ray handle)
NamedTensors = Callable[[], Iterable[tuple[str, torch.Tensor]]]  # a fresh pass over the policy's weights per call


class WeightTransferUnavailable(RuntimeError):
    """The configured weight transfer cannot run here (e.g. nccl on a machine without GPUs)."""


def gpu_backend(rollout: RolloutConfig) -> str:
    """The resolved backend when it is a GPU one (nccl | ipc), else an error saying how to get one."""
    backend = rollout.weight_transfer_backend
    if backend not in GPU_BACKENDS:
        raise WeightTransferUnavailable(
            f"rollout.weight_transfer resolves to {backend}; the GPU weight sync needs nccl or ipc "
            "(rollout.gpus_per_worker > 0). object_store runs through RolloutPool.sync_weights"
        )
    return backend


def require_gpus(backend: str, cuda_available: bool) -> None:
    """Checked where the transfer runs (learner and rollout workers), not on the driver."""
    if not cuda_available:
        raise WeightTransferUnavailable(
            f"rollout.weight_transfer {backend} needs GPUs: torch.cuda.is_available() is False here "
            "(without GPUs use rollout.weight_transfer: auto or object_store)"
        )


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
    several independent engines each gets its own offset. ipc payloads go out unchanged.

    >>> per_worker_init_info({"world_size": 3, "rank_offset": 1}, ["a", "b"], [1, 2])["b"]
    {'world_size': 3, 'rank_offset': 2}
    """
    if rank_offsets is None:
        return {name: init_info for name in names}
    if len(rank_offsets) != len(names):
        raise ValueError(f"{len(rank_offsets)} rank offsets for {len(names)} workers")
    return {name: {**init_info, "rank_offset": offset} for name, offset in zip(names, rank_offsets)}


def call_workers(
    workers: Sequence[Worker], what: str, submit: Callable[[str, Any], ray.ObjectRef], timeout_s: float,
    timeout_key: str = "rollout.update_timeout_s", unanswered: set[str] | None = None,
) -> list:
    """submit(name, handle) on every worker at once, then wait for all of them until the deadline;
    results in worker order. Every worker that fails or stays silent is named in one WeightSyncError.
    `unanswered`, when given, holds the names still awaited (read by a stalled caller's error)."""
    pending = {submit(name, handle): name for name, handle in workers}
    if unanswered is not None:
        unanswered.clear()
        unanswered.update(pending.values())
    deadline = time.monotonic() + timeout_s
    results, failures = {}, []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            failures += [f"{name}: no answer to {what} within {timeout_key}={timeout_s:g}s" for name in pending.values()]
            break
        name = pending.pop(ready[0])
        if unanswered is not None:
            unanswered.discard(name)
        try:
            results[name] = ray.get(ready[0])
        except (RayActorError, RayTaskError) as err:
            failures.append(f"{name}: {what} failed: {first_line(err)}")
    if failures:
        raise WeightSyncError("weight sync: " + "; ".join(failures))
    return [results[name] for name, _ in workers]


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


class RolloutClient:
    """vLLM's `VLLMWeightSyncClient` protocol (structural: these four methods, plain dicts) over the
    Ray handles of GpuRolloutWorkers, each call with a deadline that names the silent workers."""

    def __init__(self, workers: Sequence[Worker], timeout_s: float, rank_offsets: Sequence[int] | None = None) -> None:
        self.workers, self.timeout_s, self.rank_offsets = list(workers), timeout_s, rank_offsets
        self.version = 0  # the policy version that the next finish_weight_update commits
        self.phase, self.unanswered = "connect", set()

    def _call(self, what: str, submit: Callable[[str, Any], ray.ObjectRef]) -> list:
        self.phase = what
        return call_workers(self.workers, what, submit, self.timeout_s, unanswered=self.unanswered)

    def waiting_on(self) -> str:
        names = ", ".join(sorted(self.unanswered)) or "none (the learner side itself)"
        return f"rollout workers not done with {self.phase}: {names}"

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        payloads = per_worker_init_info(init_info, [name for name, _ in self.workers], self.rank_offsets)
        self._call("init_weight_transfer", lambda name, h: h.weight_transfer_init.remote(payloads[name]))

    def start_weight_update(self) -> None:
        self._call("start_weight_update", lambda name, h: h.weight_transfer_start.remote())

    def update_weights(self, update_info: dict | list[dict]) -> None:
        self._call("update_weights", lambda name, h: h.weight_transfer_update.remote(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = self.version
        self._call("finish_weight_update", lambda name, h: h.weight_transfer_finish.remote(version))

    def shutdown_weight_transfer_engine(self) -> None:
        self._call("shutdown_weight_transfer", lambda name, h: h.weight_transfer_shutdown.remote())


class TrainerSync:
    """One learner rank's side: vLLM's trainer engine over the policy's (name, tensor) stream. Built
    on every rank (under ZeRO-3 each pass is a gather all ranks join); rank 0 sends."""

    def __init__(
        self, backend: str, rank: int, client: RolloutClient, weights: NamedTensors, *, bucket_bytes: int,
        packed: bool, timeout_s: float, master_address: str = "", master_port: int = 0, world_size: int = 0,
    ) -> None:
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        self.client, self.timeout_s, self.is_sender, self.broken = client, timeout_s, rank == 0, False
        info = _trainer_init_info(backend, rank, bucket_bytes, packed, master_address, master_port, world_size)
        self.engine = self._bounded(
            f"connect ({backend})",
            lambda: WeightTransferTrainerFactory.trainer_init(info, client=client, source=_weight_source(weights)),
        )

    def send(self, version: int) -> float:
        """Every rank calls it; returns seconds (start, the transfer, finish on every worker)."""
        if self.broken:
            raise WeightSyncError("weight sync: an earlier transfer failed or stalled; the group is unusable: connect again")
        self.client.version = version
        started = time.perf_counter()
        self._bounded(f"sync to policy version {version}", self.engine.send_weights)
        return time.perf_counter() - started

    def close(self) -> None:
        """Release the transfer group on both sides. After a failure it is left alone: its NCCL calls
        may still be blocked, and tearing it down would block too."""
        if self.broken:
            return
        if self.is_sender:
            self.client.shutdown_weight_transfer_engine()
        self._bounded("shutdown", self.engine.shutdown)

    def _bounded(self, what: str, fn: Callable[[], Any]) -> Any:
        def stalled() -> Exception:
            where = self.client.waiting_on() if self.is_sender else "the other learner ranks"
            return WeightSyncError(f"weight sync: {what}: no progress within rollout.update_timeout_s={self.timeout_s:g}s; {where}")

        try:
            return run_bounded(fn, self.timeout_s, stalled)
        except BaseException:
            self.broken = True
            raise


def _trainer_init_info(backend: str, rank: int, bucket_bytes: int, packed: bool, address: str, port: int, world_size: int):
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        # packed: one broadcast per buffer of bucket_bytes (double-buffered) instead of one per tensor
        return NCCLTrainerInitInfo(master_address=address, master_port=port, world_size=world_size, rank=rank,
                                   packed=True, packed_buffer_size_bytes=bucket_bytes)
    from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

    return IPCTrainerInitInfo(rank=rank, packed=packed, packed_buffer_size_bytes=bucket_bytes)


def _weight_source(weights: NamedTensors):
    """vLLM's WeightSource over a (name, tensor) stream. Its metadata (name, dtype, full shape) comes
    from one pass over the stream, on every rank, once per connect (a gather under ZeRO-3); vLLM checks
    every later pass against it parameter by parameter."""
    from vllm.distributed.weight_transfer import ParamMeta, WeightSource

    meta = [ParamMeta(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in weights()]

    class StreamedWeights(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return meta

        def __iter__(self):
            return iter(weights())

    return StreamedWeights()


class GpuLearnerWorker(LearnerWorker):
    """A LearnerWorker that also sends its weights through vLLM's native transfer (on every rank)."""

    weight_sync: TrainerSync | None = None

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """Where rank 0 opens the NCCL rendezvous: this node's address and a free port."""
        return ray.util.get_node_ip_address(), free_port()

    def connect_weight_sync(self, workers: list[Worker], address: str, port: int) -> None:
        rc = self.cfg.rollout
        backend = gpu_backend(rc)
        require_gpus(backend, torch.cuda.is_available())
        self.close_weight_sync()
        offsets, world_size = nccl_rank_offsets(len(workers)) if backend == "nccl" else (None, 0)
        self.weight_sync = TrainerSync(
            backend, self.engine.rank, RolloutClient(workers, rc.update_timeout_s, offsets), self.engine.full_weights,
            bucket_bytes=int(rc.weight_bucket_mb * 2**20),
            # ipc, unpacked: handles to the parameters themselves, no copy. Under ZeRO-3 the gathered
            # copies would all stay alive until the workers finish, so they go in packed buffers.
            packed=self.cfg.learner.zero_stage == 3,
            timeout_s=rc.update_timeout_s, master_address=address, master_port=port, world_size=world_size,
        )

    def send_weights(self, version: int) -> float:
        if self.weight_sync is None:
            raise RuntimeError("send_weights before connect_weight_sync")
        seconds = self.weight_sync.send(version)
        if self.cfg.rollout.colocate:
            torch.cuda.empty_cache()  # hand back the learner's cached blocks before vLLM's KV cache wakes
        return seconds

    def close_weight_sync(self) -> None:
        if self.weight_sync is not None:
            sync, self.weight_sync = self.weight_sync, None
            sync.close()

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """log p(continuation[t] | prompt, continuation[:t]) under the learner's weights (one rank,
        no DeepSpeed step): what the rollout workers must reproduce after a sync."""
        module = self.engine.module
        ids = torch.tensor([[*prompt, *continuation]], device=next(module.parameters()).device)
        with torch.no_grad():
            logits = module(input_ids=ids).logits[0].float()  # (L, V)
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # position t-1 predicts token t
        return logp.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1).tolist()


class GpuRolloutWorker(RolloutWorker):
    """A RolloutWorker whose engine also takes weights through vLLM's native transfer (driven by the
    learner's RolloutClient) and, colocated, sleeps while the learner steps."""

    def __init__(self, model_path: str, cfg: PipelineConfig) -> None:
        require_gpus(gpu_backend(cfg.rollout), torch.cuda.is_available())  # before a minute of engine start
        super().__init__(model_path, cfg)

    def weight_transfer_init(self, init_info: dict) -> None:
        self.engine.init_weight_transfer(init_info, self.update_timeout_s)

    def weight_transfer_start(self) -> None:
        self.engine.start_weight_update(self.update_timeout_s)

    def weight_transfer_update(self, update_info: dict | list[dict]) -> None:
        self.engine.receive_weights(update_info, self.update_timeout_s)

    def weight_transfer_finish(self, version: int) -> dict[str, int]:
        self.engine.finish_weight_update(self.update_timeout_s)
        self.policy_version = version
        return self.ready()

    def weight_transfer_shutdown(self) -> None:
        self.engine.shutdown_weight_transfer(self.update_timeout_s)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.engine.wake_up(tags)


class GpuWeightSync:
    """Driver side. `learners`: every GpuLearnerWorker rank's handle, in rank order; `workers`: (name,
    handle) of every GpuRolloutWorker. Colocated: `sleep_rollouts()` after sampling, before the learner
    steps; `sync` wakes them (the weights before the transfer, the KV cache after it). The driver needs
    no GPU; the learner and the rollout workers check theirs."""

    def __init__(self, cfg: PipelineConfig, learners: Sequence[Any], workers: Sequence[Worker]) -> None:
        self.backend = gpu_backend(cfg.rollout)
        self.cfg, self.workers = cfg, list(workers)
        self.learners = [(f"learner rank {rank}", handle) for rank, handle in enumerate(learners)]
        ((address, port),) = self._learners("weight_sync_endpoint", lambda _, h: h.weight_sync_endpoint.remote(), self.learners[:1])
        self._learners("connect_weight_sync", lambda _, h: h.connect_weight_sync.remote(self.workers, address, port))

    def sync(self, version: int) -> float:
        """The learner's weights into every rollout worker as policy `version`; returns rank 0's seconds."""
        colocated = self.cfg.rollout.colocate
        if colocated:
            self._rollouts("wake_up weights", lambda _, h: h.wake_up.remote(["weights"]))
        seconds = self._learners("send_weights", lambda _, h: h.send_weights.remote(version))[0]
        if colocated:
            self._rollouts("wake_up kv_cache", lambda _, h: h.wake_up.remote(["kv_cache"]))
        return seconds

    def sleep_rollouts(self) -> None:
        self._rollouts("sleep", lambda _, h: h.sleep.remote())

    def close(self) -> None:
        self._learners("close_weight_sync", lambda _, h: h.close_weight_sync.remote())

    def _learners(self, what: str, submit, ranks: Sequence[Worker] | None = None) -> list:
        # the learner's own deadlines (rollout.update_timeout_s) fire first and name the rollout worker
        return call_workers(ranks or self.learners, what, submit, self.cfg.learner.timeout_s, "learner.timeout_s")

    def _rollouts(self, what: str, submit) -> list:
        return call_workers(self.workers, what, submit, self.cfg.rollout.update_timeout_s)
