"""vLLM worker extension (runs inside each vLLM worker process): reseeds the sampler, and loads new
policy weights from safetensors bucket files and reloads them in place through the worker's public
`reload_weights`. When the engine core runs in the caller's process, the buckets are read in place.

Installed with `LLM(worker_extension_cls="actors.weight_receiver.WeightReceiver")` and driven by
`LLM.collective_rpc(<method name>, args=...)`. Only file paths cross vLLM's RPC; the bytes move
through a shared-memory staging directory (one copy in, one copy into the parameters), which is
several times faster than pushing the bytes through the RPC. The model is touched only after every
bucket has been read and counted, so a failed transfer never leaves a half-updated engine.
Imports no vLLM.
"""

from __future__ import annotations

import logging

import safetensors.torch
import torch

from wavalign.weights import bucket_views


class WeightReceiver:
    """Mixed into vLLM's worker class; `self` is the vLLM worker."""

    def wavalign_load_weight_files(self, paths: list[str], expected_tensors: int) -> int:
        staged = {}
        for path in paths:
            staged.update(safetensors.torch.load_file(path))
        return self._wavalign_reload(staged, expected_tensors)

    def wavalign_load_weight_buffers(self, buffers: list, expected_tensors: int) -> int:
        """The engine core runs in the caller's process (rollout.reproducible): the buckets arrive as
        the caller's own buffers (Ray object-store views), read in place, copied once into the model."""
        staged = {}
        for buffer in buffers:
            staged.update(bucket_views(buffer))
        return self._wavalign_reload(staged, expected_tensors)

    def _wavalign_reload(self, staged: dict, expected_tensors: int) -> int:
        if len(staged) != expected_tensors:
            raise RuntimeError(f"weight update incomplete: {len(staged)} of {expected_tensors} tensors arrived")
        _quiet_expected_reload_warnings(tied_head=bool(getattr(self.model_config.hf_config, "tie_word_embeddings", False)))
        self.reload_weights(weights_iterator=iter(staged.items()))
        return len(staged)

    def wavalign_reseed(self, seed: int) -> None:
        """Restart the sampler's random stream (vLLM samples from this process's torch generator)."""
        torch.manual_seed(seed)


class _ExpectedReloadWarnings(logging.Filter):
    """vLLM's in-place reload warns "<layer>: Failed to load weights" for every layer that received
    no tensor, and keeps that layer's current tensors. Two such layers are expected on every update:
    the rotary embedding (no weights, only its cos/sin cache) and the LM head of a model whose head is
    tied to the input embeddings (vLLM skips `lm_head.*` then; the head reads the reloaded embedding).
    Those two are dropped; any other layer's warning (an untied head's included) still shows."""

    def __init__(self, tied_head: bool) -> None:
        super().__init__()
        self.expected = {"RotaryEmbedding", "ParallelLMHead"} if tied_head else {"RotaryEmbedding"}

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.expected)


def _quiet_expected_reload_warnings(tied_head: bool) -> None:
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _ExpectedReloadWarnings) for f in logger.filters):
        logger.addFilter(_ExpectedReloadWarnings(tied_head))
