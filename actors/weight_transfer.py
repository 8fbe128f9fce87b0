"""The project's backend of vLLM's native weight-transfer API (vLLM 0.32,
`vllm.distributed.weight_transfer`), registered on both sides under `object_store`, and the trainer
init infos of every backend the pipeline drives (object_store, nccl, ipc). The only file that imports
vLLM's weight-transfer API; the control plane around it (deadlines, which workers, versions) is
actors/weight_sync.py, the same for every backend.

object_store (CPU, any node): the sending learner rank packs the policy's tensors, as raw bytes,
into chunks of at most `rollout.weight_bucket_mb` and puts each chunk into Ray's object store once
(a copy into shared memory); each update carries the chunk's object ref and the tensors' names,
dtypes and shapes. The rollout worker resolves the ref (zero-copy on its node; Ray moves it between
nodes) and hands the bytes to its vLLM worker: by reference when vLLM's engine core runs in the
worker's process, else through one file in a shared-memory staging folder. vLLM's worker engine
loads them with its layerwise reload (as its nccl engine does). The last version's chunks stay in
the store until the next version, so a worker that comes up meanwhile receives them without
touching the learner's parameters.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from vllm.distributed.weight_transfer import (
    ParamMeta,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.base import TrainerInitInfo, WeightTransferInitInfo, WeightTransferUpdateInfo

OBJECT_STORE = "object_store"
NamedTensors = Callable[[], Iterable[tuple[str, torch.Tensor]]]  # a fresh pass over the policy's weights per call


# ------------------------------------------------------------------------------------ worker side
@dataclass
class ObjectStoreInitInfo(WeightTransferInitInfo):
    pass  # no group to join: every update carries its own chunk


@dataclass
class ObjectStoreUpdateInfo(WeightTransferUpdateInfo):
    """One chunk: its tensors' names, dtypes and shapes, their byte sizes in order, and the bytes:
    `buffers` (one uint8 array per tensor, held in this process) or `path` (one staging file)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    sizes: list[int]
    total: int  # tensors in the whole version, checked when it is finished
    buffers: list | None = None
    path: str | None = None
    chunk: Any = None  # the object ref, resolved by the rollout worker before vLLM sees the update


class ObjectStoreWorkerEngine(WeightTransferEngine[ObjectStoreInitInfo, ObjectStoreUpdateInfo]):
    """vLLM worker side: loads each chunk with the model's own `load_weights` inside vLLM's layerwise
    reload, and refuses to finish a version that did not arrive whole."""

    init_info_cls = ObjectStoreInitInfo
    update_info_cls = ObjectStoreUpdateInfo

    def init_transfer_engine(self, init_info: ObjectStoreInitInfo) -> None:
        self.received, self.expected = 0, None

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.received, self.expected = 0, None
        quiet_expected_reload_warnings()
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: ObjectStoreUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        if update_info.buffers is not None:
            parts = update_info.buffers
        elif update_info.path is not None:
            whole = np.memmap(update_info.path, dtype=np.uint8, mode="r")
            parts = np.split(whole, np.cumsum(update_info.sizes)[:-1]) if update_info.sizes else []
        else:
            raise ValueError("an object_store update holds neither buffers nor a staging path")
        with disable_mtp_completeness_check():
            self.model.load_weights(unpacked(update_info, parts))
        self.received += len(update_info.names)
        self.expected = update_info.total

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if self.expected is not None and self.received != self.expected:
            raise RuntimeError(f"weight update incomplete: {self.received} of {self.expected} tensors arrived")
        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # CPU: nothing to synchronize

    def shutdown(self) -> None:
        pass


def unpacked(info: ObjectStoreUpdateInfo, parts: list) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views of a chunk's byte buffers (read-only memory is read, never written)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that a read-only buffer is not writable
        for name, dtype, shape, part in zip(info.names, info.dtype_names, info.shapes, parts, strict=True):
            out.append((name, torch.from_numpy(np.asarray(part)).view(getattr(torch, dtype)).view(shape)))
    return out


# ------------------------------------------------------------------------------------ trainer side
@dataclass
class ObjectStoreTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = OBJECT_STORE
    chunk_bytes: int = 64 * 2**20


@dataclass
class SendTimings:
    """Where a send's time went (seconds): gathering and packing the tensors into the object store,
    the slowest worker's fetching of the chunks (transfer) and vLLM's taking them in (load), and the
    finish (vLLM's layerwise reload ends: the reloaded layers are processed for its kernels)."""

    pack: float = 0.0
    transfer: float = 0.0
    load: float = 0.0
    finish: float = 0.0
    bytes: int = 0


class ObjectStoreTrainerEngine(TrainerWeightTransferEngine[ObjectStoreTrainerInitInfo]):
    init_info_cls = ObjectStoreTrainerInitInfo

    def __init__(self, *, client, source: WeightSource, is_sender: bool, chunk_bytes: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.chunk_bytes = chunk_bytes
        self.last_chunks: list[dict] = []  # the last version's updates (object refs): for late workers
        self.timings = SendTimings()

    @classmethod
    def trainer_init(cls, init_info: ObjectStoreTrainerInitInfo, *, client, source: WeightSource | None = None):
        if source is None:
            raise ValueError("the object_store weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, chunk_bytes=init_info.chunk_bytes)
        if engine.is_sender:
            client.init_weight_transfer_engine(asdict(ObjectStoreInitInfo()))
        return engine

    def send_weights(self) -> None:
        """Every rank iterates the source (a collective gather under ZeRO-3); the sender puts each
        chunk into the object store and has the workers load it, then finish."""
        import ray

        self.last_chunks = []  # the previous version leaves the store before this one goes in
        timings, chunks = SendTimings(), []
        if not self.is_sender:
            for _ in self.source:
                pass
            self.timings = timings
            return
        self.client.start_weight_update()
        total = len(self.source.metadata())
        pending = _chunks(iter(self.source), self.chunk_bytes)
        while True:
            started = time.perf_counter()
            chunk = next(pending, None)  # the gather (ZeRO-3) happens here
            if chunk is None:
                break
            names, tensors = chunk
            parts = [t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy() for t in tensors]
            update = {
                "names": names,
                "dtype_names": [str(t.dtype).removeprefix("torch.") for t in tensors],
                "shapes": [list(t.shape) for t in tensors],
                "sizes": [p.nbytes for p in parts],
                "total": total,
                "chunk": ray.put(parts),
            }
            timings.pack += time.perf_counter() - started
            # every worker fetches and loads the chunk at once; each says how long each part took
            said = self.client.update_weights(update) or {}
            timings.transfer += max((s.get("transfer", 0.0) for s in said.values()), default=0.0)
            timings.load += max((s.get("load", 0.0) for s in said.values()), default=0.0)
            timings.bytes += sum(update["sizes"])
            chunks.append(update)
        finishing = time.perf_counter()
        self.client.finish_weight_update()
        timings.finish = time.perf_counter() - finishing
        self.timings, self.last_chunks = timings, chunks

    def replay(self, client) -> None:
        """The last version again, to the workers of `client` (sender only; the parameters are not read)."""
        if not self.last_chunks:
            raise RuntimeError("no version has been sent yet")
        client.start_weight_update()
        for update in self.last_chunks:
            client.update_weights(update)
        client.finish_weight_update()


def _chunks(
    pairs: Iterator[tuple[str, torch.Tensor]], chunk_bytes: int
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """(names, tensors) of at most ~chunk_bytes each (a larger tensor alone), in the source's order."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    size = 0
    for name, tensor in pairs:
        nbytes = tensor.numel() * tensor.element_size()
        if names and size + nbytes > chunk_bytes:
            yield names, tensors
            names, tensors, size = [], [], 0
        names.append(name)
        tensors.append(tensor)
        size += nbytes
    if names:
        yield names, tensors


# ------------------------------------------------------------------------------------ both
def weight_source(weights: NamedTensors) -> WeightSource:
    """vLLM's WeightSource over a (name, tensor) stream. Its metadata (name, dtype, full shape) comes
    from one pass over the stream, on every rank, once per connect (a gather under ZeRO-3); vLLM's
    engines check later passes against it."""
    meta = [ParamMeta(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in weights()]

    class StreamedWeights(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return meta

        def __iter__(self):
            return iter(weights())

    return StreamedWeights()


def trainer_init_info(
    backend: str,
    rank: int,
    chunk_bytes: int,
    *,
    packed: bool = True,
    address: str = "",
    port: int = 0,
    world_size: int = 0,
) -> TrainerInitInfo:
    """The trainer side's init info of `backend` for learner rank `rank` (rank 0 sends)."""
    if backend == OBJECT_STORE:
        return ObjectStoreTrainerInitInfo(rank=rank, chunk_bytes=chunk_bytes)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        # packed: one broadcast per buffer of chunk_bytes (double-buffered) instead of one per tensor
        return NCCLTrainerInitInfo(
            master_address=address,
            master_port=port,
            world_size=world_size,
            rank=rank,
            packed=True,
            packed_buffer_size_bytes=chunk_bytes,
        )
    from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

    return IPCTrainerInitInfo(rank=rank, packed=packed, packed_buffer_size_bytes=chunk_bytes)


def trainer_init(init_info: TrainerInitInfo, client, weights: NamedTensors) -> TrainerWeightTransferEngine:
    register_backends()
    return WeightTransferTrainerFactory.trainer_init(init_info, client=client, source=weight_source(weights))


def register_backends() -> None:
    """object_store in both of vLLM's registries (idempotent): in the learner's process, and in each
    vLLM worker process through the worker extension, before vLLM builds the worker's engine."""
    if OBJECT_STORE not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(OBJECT_STORE, ObjectStoreWorkerEngine)
    if OBJECT_STORE not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(OBJECT_STORE, ObjectStoreTrainerEngine)


# ------------------------------------------------------------------------------------ reload warnings
class _ExpectedReloadWarnings(logging.Filter):
    """vLLM's layerwise reload warns "<layer>: Failed to load weights" for every layer that received
    no tensor, and keeps that layer's current tensors. One such layer is expected on every update:
    the rotary embedding (no weights, only its cos/sin cache); its warning is dropped. Any other
    layer's warning still shows: it would serve stale weights (a tied LM head receives its tensor
    under its own name, see DeepSpeedEngine.full_weights)."""

    expected = frozenset({"RotaryEmbedding"})

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.expected)


def quiet_expected_reload_warnings() -> None:
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _ExpectedReloadWarnings) for f in logger.filters):
        logger.addFilter(_ExpectedReloadWarnings())
