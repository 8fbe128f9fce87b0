"""The project's backend of vLLM's native weight-transfer API (vLLM 0.32,
`vllm.distributed.weight_transfer`), registered on both sides under `object_store`, and the trainer
init infos of every backend the pipeline drives (object_store, nccl, ipc). The only file that imports
vLLM's weight-transfer API; the control plane around it (deadlines, which workers, versions) is
actors/weight_sync.py, the same for every backend.

object_store (CPU, any node): the sending learner rank writes the policy's tensors, as raw bytes,
into its weight region (actors/weight_region.py: one shared-memory file, made at connect, reused by
every version) in chunks of at most `rollout.weight_bucket_mb`; each update names the chunk's tensors
(names, dtypes, shapes, offsets). Rollout workers on the learner's node have their vLLM workers read
the region in place. For workers on other nodes (or when the region's folder has no room) the chunk
also goes into Ray's object store once, and the update carries its object ref: the rollout worker
resolves it (Ray moves it between nodes) and hands the bytes to its vLLM worker, by reference when
vLLM's engine core runs in the worker's process, else through one file in the staging folder. vLLM's
worker engine loads each chunk with its layerwise reload (as its nccl engine does) while the learner
writes the next. The last version stays in the region (and its chunks in the store) until the next
version, so a worker that comes up meanwhile receives it without touching the learner's parameters.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import ray
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

from actors.weight_region import MappedRegions, WeightRegion, region_size, shared_folder

OBJECT_STORE = "object_store"
NamedTensors = Callable[[], Iterable[tuple[str, torch.Tensor]]]  # a fresh pass over the policy's weights per call


# ------------------------------------------------------------------------------------ worker side
@dataclass
class ObjectStoreInitInfo(WeightTransferInitInfo):
    pass  # no group to join: every update carries its own chunk


@dataclass
class ObjectStoreUpdateInfo(WeightTransferUpdateInfo):
    """One chunk: its tensors' names, dtypes and shapes, their byte sizes in order, and the bytes:
    `region` + `offsets` (the learner's weight region, on this node), `buffers` (one uint8 array per
    tensor, held in this process) or `path` (one staging file, the tensors back to back)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    sizes: list[int]
    total: int  # tensors in the whole version, checked when it is finished
    region: str | None = None
    offsets: list[int] | None = None
    node: str | None = None  # the Ray node of the region
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
        self.regions = MappedRegions()

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.received, self.expected = 0, None
        quiet_expected_reload_warnings()
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: ObjectStoreUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        if update_info.region is not None:
            parts = self.regions.parts(update_info.region, update_info.offsets, update_info.sizes)
        elif update_info.buffers is not None:
            parts = update_info.buffers
        elif update_info.path is not None:
            whole = np.memmap(update_info.path, dtype=np.uint8, mode="r")
            parts = np.split(whole, np.cumsum(update_info.sizes)[:-1]) if update_info.sizes else []
        else:
            raise ValueError("an object_store update holds neither a region, buffers nor a staging path")
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
    region_dir: str = "/dev/shm"  # where the weight region is made (rollout.weight_staging_dir)


@dataclass
class SendTimings:
    """Where a send's time went (seconds): gathering the tensors and writing them into the region (and
    the object store, for workers on other nodes), the slowest worker's fetching of the chunks from the
    store (transfer) and vLLM's taking them in (load), and the finish (vLLM's layerwise reload ends).
    vLLM loads a chunk while the learner writes the next, so pack and load overlap."""

    pack: float = 0.0
    transfer: float = 0.0
    load: float = 0.0
    finish: float = 0.0
    bytes: int = 0

    def add_workers(self, said: dict[str, dict]) -> None:
        """One chunk's answers: the slowest worker's fetch and load."""
        self.transfer += max((s.get("transfer", 0.0) for s in said.values()), default=0.0)
        self.load += max((s.get("load", 0.0) for s in said.values()), default=0.0)


class ObjectStoreTrainerEngine(TrainerWeightTransferEngine[ObjectStoreTrainerInitInfo]):
    init_info_cls = ObjectStoreTrainerInitInfo

    def __init__(self, *, client, source: WeightSource, is_sender: bool, chunk_bytes: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.chunk_bytes = chunk_bytes
        self.region: WeightRegion | None = None  # None: every chunk goes through the object store
        self.node = ""
        self.store_too = False  # a connected worker is on another node: chunks go into the object store too
        self.last_chunks: list[dict] = []  # the last version's updates: for late workers
        self.timings = SendTimings()

    @classmethod
    def trainer_init(cls, init_info: ObjectStoreTrainerInitInfo, *, client, source: WeightSource | None = None):
        if source is None:
            raise ValueError("the object_store weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, chunk_bytes=init_info.chunk_bytes)
        if engine.is_sender:
            engine.node = ray.get_runtime_context().get_node_id()
            sizes = [meta.dtype.itemsize * int(np.prod(meta.shape)) for meta in source.metadata()]
            try:
                engine.region = WeightRegion.create(shared_folder(init_info.region_dir), region_size(sizes))
            except OSError as err:
                print(f"warning: weight sync: {err}; the weights go through Ray's object store", flush=True)
            engine.store_too = engine._store_needed(client)  # the workers are fixed until the next connect
            client.init_weight_transfer_engine(asdict(ObjectStoreInitInfo()))
        return engine

    def send_weights(self) -> None:
        """Every rank iterates the source (a collective gather under ZeRO-3); the sender writes each
        chunk into the region (and the store, where a worker needs it) and has the workers load it
        while it writes the next, then finish."""
        self.last_chunks = []  # the previous version leaves the store before this one goes in
        timings, chunks = SendTimings(), []
        if not self.is_sender:
            for _ in self.source:
                pass
            self.timings = timings
            return
        self.client.start_weight_update()
        total, offset, loading = len(self.source.metadata()), 0, None
        pending = _chunks(iter(self.source), self.chunk_bytes)
        while True:
            started = time.perf_counter()
            chunk = next(pending, None)  # the gather (ZeRO-3) happens here
            if chunk is None:
                break
            update, offset = self._pack(*chunk, total, offset, self.store_too)
            timings.pack += time.perf_counter() - started
            if loading is not None:
                timings.add_workers(loading())  # the previous chunk, loaded while this one was packed
            loading = self.client.submit_update(update)
            timings.bytes += sum(update["sizes"])
            chunks.append(update)
        if loading is not None:
            timings.add_workers(loading())
        finishing = time.perf_counter()
        self.client.finish_weight_update()
        timings.finish = time.perf_counter() - finishing
        self.timings, self.last_chunks = timings, chunks

    def _pack(self, names: list[str], tensors: list[torch.Tensor], total: int, offset: int, store_too: bool):
        """One chunk's update (and the offset after it in the region)."""
        update = {
            "names": names,
            "dtype_names": [str(t.dtype).removeprefix("torch.") for t in tensors],
            "shapes": [list(t.shape) for t in tensors],
            "sizes": [t.numel() * t.element_size() for t in tensors],
            "total": total,
            "chunk": None,
        }
        if self.region is None:
            parts = [t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy() for t in tensors]
            return {**update, "chunk": ray.put(parts)}, offset
        offsets, offset = self.region.write(tensors, offset)
        update.update(region=str(self.region.path), offsets=offsets, node=self.node)
        if store_too:
            update["chunk"] = ray.put(self.region.read(offsets, update["sizes"]))
        return update, offset

    def _store_needed(self, client) -> bool:
        """Whether a chunk must go into the object store too: a worker of `client` on another node."""
        return self.region is not None and any(node != self.node for node in client.worker_nodes().values())

    def replay(self, client) -> None:
        """The last version again, to the workers of `client` (sender only; the parameters are not read:
        a worker on another node gets the region's bytes through the object store)."""
        if not self.last_chunks:
            raise RuntimeError("no version has been sent yet")
        store_too = self._store_needed(client)
        client.start_weight_update()
        for update in self.last_chunks:
            if store_too and update["chunk"] is None:
                update["chunk"] = ray.put(self.region.read(update["offsets"], update["sizes"]))
            client.update_weights(update)
        client.finish_weight_update()

    def shutdown(self) -> None:
        if self.region is not None:
            self.region.remove()
            self.region = None


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
    region_dir: str = "/dev/shm",
) -> TrainerInitInfo:
    """The trainer side's init info of `backend` for learner rank `rank` (rank 0 sends)."""
    if backend == OBJECT_STORE:
        return ObjectStoreTrainerInitInfo(rank=rank, chunk_bytes=chunk_bytes, region_dir=region_dir)
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
