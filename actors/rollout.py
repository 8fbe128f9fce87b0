"""RolloutWorker: one vLLM engine that samples G responses per prompt and labels each token's modality.

A plain class; the driver makes it a Ray worker at the call site (`ray.remote(RolloutWorker)`), so it
can also be built directly in a test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from actors.vllm_engine import VLLMEngine
from learner.masks import modality_codes
from wavalign.config import PipelineConfig
from wavalign.model_files import load_tokenizer_and_layout


@dataclass(frozen=True)
class RolloutRecord:
    """One sampled response of one prompt."""

    prompt_id: str
    sample_index: int
    response_token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # the sampler's logprob of each response token
    modality: tuple[int, ...]  # learner.masks codes: 1 text, 2 speech, 3 BOA/EOA, 0 outside the completion
    finish_reason: str
    policy_version: int


class RolloutWorker:
    """Serves one policy version at a time; `policy_version` says which (0 = the checkpoint on disk)."""

    def __init__(self, model_path: str, cfg: PipelineConfig) -> None:
        _, self.layout = load_tokenizer_and_layout(model_path, cfg.model.layout)
        self.group_size = cfg.rollout.group_size
        self.update_timeout_s = cfg.rollout.update_timeout_s
        self.policy_version = 0
        self.engine = VLLMEngine(
            model_path,
            cfg.rollout,
            dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_model_len,
            seed=cfg.run.seed,
            eos_id=self.layout.eos_id,
        )

    def ready(self) -> dict[str, int]:
        """Answers once the engine is up: the process id and the version served."""
        return {"pid": os.getpid(), "policy_version": self.policy_version}

    def update_weights(self, version: int, expected_tensors: int, *buckets: bytes) -> int:
        """Load new weights (safetensors buckets, in order) and serve them as `version`.

        One call per update: Ray resolves the bucket refs straight into this call's arguments. The
        engine changes only once every bucket has arrived and the tensor count matches."""
        timeout = self.update_timeout_s
        self.engine.begin_update(version, timeout)
        received = sum(self.engine.add_bucket(blob, timeout) for blob in buckets)
        if received != expected_tensors:
            raise RuntimeError(f"weight update to version {version}: {received} of {expected_tensors} tensors arrived")
        self.engine.finish_update(expected_tensors, timeout)
        self.policy_version = version
        return version

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        return self.engine.continuation_logprobs(prompt, continuation)

    def generate(self, prompts: Sequence[tuple[str, Sequence[int]]]) -> list[RolloutRecord]:
        """G = rollout.group_size records per (prompt_id, prompt token ids), in prompt order."""
        groups = self.engine.sample([ids for _, ids in prompts], n=self.group_size)
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
