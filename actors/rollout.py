"""RolloutWorker: one vLLM engine that samples G responses per prompt and labels each token's modality.

A plain class; the driver makes it a Ray worker at the call site (`ray.remote(RolloutWorker)`), so it
can also be built directly in a test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from actors.vllm_engine import VLLMEngine
from learner.masks import modality_codes
from wavalign.config import PipelineConfig
from wavalign.failpoints import failpoint
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
        shm = cfg.rollout.weight_staging_dir
        self.staging_dir = shm if os.path.isdir(shm) else tempfile.gettempdir()
        self.policy_version = 0
        failpoint("rollout.start")  # fault tests: a worker (a replacement) that dies while its engine starts
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

    def update_weights(self, version: int, expected_tensors: int, *buckets) -> dict[str, int]:
        """Load new weights (safetensors buckets, in order) and serve them as `version`.

        One call per update: Ray resolves the bucket refs straight into this call's arguments
        (zero-copy views of the object store for uint8 arrays). With the engine core in this process
        the vLLM worker reads those views in place; otherwise each bucket is written once into a
        shared-memory staging directory that the vLLM worker process reads. The engine changes only
        once every bucket has arrived and the tensor count matches."""
        failpoint("rollout.update_weights")
        if self.engine.in_process:
            self.engine.load_weight_buffers(buckets, expected_tensors, self.update_timeout_s)
        else:
            self._load_through_staging(version, expected_tensors, buckets)
        self.policy_version = version
        return self.ready()

    def _load_through_staging(self, version: int, expected_tensors: int, buckets) -> None:
        staging = tempfile.mkdtemp(prefix=f"wavalign-v{version}-", dir=self.staging_dir)
        try:
            paths = []
            for index, bucket in enumerate(buckets):
                path = os.path.join(staging, f"{index:05d}.safetensors")
                with open(path, "wb") as out:
                    out.write(memoryview(bucket))
                paths.append(path)
            self.engine.load_weight_files(paths, expected_tensors, self.update_timeout_s)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

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
