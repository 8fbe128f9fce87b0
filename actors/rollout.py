"""RolloutWorker: one vLLM engine that samples G responses per prompt and labels each token's modality.

A plain class; the driver makes it a Ray worker at the call site (`ray.remote(RolloutWorker)`), so it
can also be built directly in a test.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Sequence

import ray
import torch

from actors.vllm_engine import VLLMEngine
from actors.weight_region import shared_folder
from learner.masks import modality_codes
from wavalign.config import PipelineConfig
from wavalign.failpoints import failpoint
from wavalign.messages import RolloutRecord
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.node_inputs import local_model_dir
from wavalign.vllm_view import vllm_view
from wavalign.worker_log import log_worker_output

VIEW_CACHE = os.path.join(tempfile.gettempdir(), "wavalign-vllm-views")  # this node's views of checkpoints


class RolloutWorker:
    """Serves one policy version at a time; `policy_version` says which (0 = the checkpoint on disk)."""

    def __init__(self, model_path: str, cfg: PipelineConfig) -> None:
        """model_path: a folder this node sees, or a URI, copied to this node (wavalign/node_inputs.py)."""
        log_worker_output()  # a run's worker: its output into <run>/logs/ too
        model_path = str(local_model_dir(model_path))
        _, self.layout = load_tokenizer_and_layout(model_path, cfg.model.layout, cfg.model.trust_remote_code)
        self.group_size = cfg.rollout.group_size
        self.update_timeout_s = cfg.rollout.update_timeout_s
        self.staging_dir = shared_folder(cfg.rollout.weight_staging_dir)
        self.policy_version = 0
        failpoint("rollout.start")  # fault tests: a worker (a replacement) that dies while its engine starts
        if cfg.model.extra_modules:  # modules vLLM's model lacks: the engine loads a view without them
            model_path = str(vllm_view(model_path, cfg.model.extra_modules, VIEW_CACHE))
        self.engine = VLLMEngine(
            model_path,
            cfg.rollout,
            dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_model_len,
            seed=cfg.run.seed,
            eos_id=self.layout.eos_id,
            trust_remote_code=cfg.model.trust_remote_code,
            architecture=cfg.model.vllm_architecture,
        )
        self.stage_chunks = not self.engine.in_process  # vLLM's worker in another process reads a file
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        name = ray.get_runtime_context().get_actor_name() if ray.is_initialized() else None
        if name:  # a Ray worker: its engine's statistics on the dashboard
            export_engine_metrics(self.engine, cfg.run.name, name)

    def ready(self) -> dict[str, int]:
        """Answers once the engine is up: the process id and the version served."""
        return {"pid": os.getpid(), "policy_version": self.policy_version}

    # The weight sync (actors/weight_sync.py): vLLM's weight-transfer phases, driven by the learner's
    # rank 0 through these methods, each with a deadline inside vLLM's RPC as well.

    def node_id(self) -> str:
        return self.node

    def weight_transfer_init(self, init_info: dict) -> None:
        self.engine.init_weight_transfer(init_info, self.update_timeout_s)

    def weight_transfer_start(self) -> None:
        self.engine.start_weight_update(self.update_timeout_s)

    def weight_transfer_update(self, update_info: dict) -> dict[str, float]:
        """One chunk of an update. object_store: on the learner's node, vLLM's worker reads the
        learner's weight region in place; elsewhere the chunk's object ref is resolved here (Ray
        fetches it) and handed to the vLLM worker by reference when its engine core runs in this
        process, else through one file in shared memory. Returns seconds spent fetching from the
        object store (transfer) and loading into vLLM (load)."""
        failpoint("rollout.update_weights")
        transfer, staged = 0.0, None
        elsewhere = update_info.get("node") != self.node  # the learner's region is not on this node
        if elsewhere and update_info.get("chunk") is not None:
            started = time.perf_counter()
            parts = ray.get(update_info["chunk"], timeout=self.update_timeout_s)
            if self.stage_chunks:
                staged = self._stage(parts)
                update_info = {**update_info, "region": None, "path": staged}
            else:
                update_info = {**update_info, "region": None, "buffers": parts}
            transfer = time.perf_counter() - started
        elif elsewhere and update_info.get("region") is not None:
            raise RuntimeError(
                f"the weights are in a region on node {update_info.get('node')} and this worker runs on "
                f"{self.node}: the update carries no object ref"
            )
        loading = time.perf_counter()
        try:
            self.engine.receive_weights({**update_info, "chunk": None}, self.update_timeout_s)
        finally:
            if staged:
                os.unlink(staged)
        return {"transfer": transfer, "load": time.perf_counter() - loading}

    def weight_transfer_finish(self, version: int) -> dict[str, int]:
        self.engine.finish_weight_update(self.update_timeout_s)
        self.policy_version = version
        return self.ready()

    def weight_transfer_shutdown(self) -> None:
        self.engine.shutdown_weight_transfer(self.update_timeout_s)

    def sleep(self) -> None:
        """Colocated on the learner's GPU: vLLM frees it while the learner steps."""
        self.engine.sleep()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.engine.wake_up(tags)

    def _stage(self, parts: Sequence) -> str:
        """The chunk's bytes in one file in the staging folder (shared memory), for a vLLM worker in
        another process."""
        handle, path = tempfile.mkstemp(prefix="wavalign-chunk-", dir=self.staging_dir)
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                out.write(memoryview(part))
        return path

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        return self.engine.continuation_logprobs(prompt, continuation)

    def generate(self, prompts: Sequence[tuple[str, Sequence[int]]], seed: int | None = None) -> list[RolloutRecord]:
        """G = rollout.group_size records per (prompt_id, prompt token ids), in prompt order; with a
        seed, the sampler's random stream restarts from it (the same call gives the same samples)."""
        failpoint("rollout.generate")
        groups = self.engine.sample([ids for _, ids in prompts], n=self.group_size, seed=seed)
        records = []
        for (prompt_id, _), samples in zip(prompts, groups):
            for index, sample in enumerate(samples):
                codes = modality_codes(torch.tensor(sample.token_ids, dtype=torch.long), self.layout)
                records.append(
                    RolloutRecord(
                        prompt_id=prompt_id,
                        sample_index=index,
                        response_token_ids=sample.token_ids,
                        logprobs=sample.logprobs,
                        modality=tuple(codes.tolist()),
                        finish_reason=sample.finish_reason,
                        policy_version=self.policy_version,
                    )
                )
        return records


ENGINE_METRICS_EVERY_S = 2.0


def export_engine_metrics(engine: VLLMEngine, run: str, worker: str) -> None:
    """vLLM's own statistics of this worker's engine (queue, KV-cache use, tokens, preemptions) as Ray
    gauges, wavalign_vllm_<name>{run, worker}, every ENGINE_METRICS_EVERY_S while the worker lives:
    a daemon thread, which reads them while the engine samples."""
    from ray.util import metrics

    gauges: dict[str, metrics.Gauge] = {}

    def export() -> None:
        while True:
            try:
                values = engine.engine_metrics()
            except Exception:  # noqa: BLE001 - statistics must never take the worker down; next round
                values = {}
            for name, value in values.items():
                if name not in gauges:
                    gauges[name] = metrics.Gauge(
                        f"wavalign_vllm_{name}", f"vLLM engine: {name}", tag_keys=("run", "worker")
                    )
                gauges[name].set(value, tags={"run": run, "worker": worker})
            time.sleep(ENGINE_METRICS_EVERY_S)

    threading.Thread(target=export, name="vllm-metrics", daemon=True).start()
