"""vLLM worker extension (runs inside each vLLM worker process): reseeds the sampler, and loads new
policy weights from safetensors bucket files and reloads them in place through the worker's public
`reload_weights`.

Installed with `LLM(worker_extension_cls="actors.weight_receiver.WeightReceiver")` and driven by
`LLM.collective_rpc(<method name>, args=...)`. Only file paths cross vLLM's RPC; the bytes move
through a shared-memory staging directory (one copy in, one copy into the parameters), which is
several times faster than pushing the bytes through the RPC. The model is touched only after every
bucket has been read and counted, so a failed transfer never leaves a half-updated engine.
Imports no vLLM.
"""

from __future__ import annotations

import safetensors.torch
import torch


class WeightReceiver:
    """Mixed into vLLM's worker class; `self` is the vLLM worker."""

    def wavalign_load_weight_files(self, paths: list[str], expected_tensors: int) -> int:
        staged = {}
        for path in paths:
            staged.update(safetensors.torch.load_file(path))
        if len(staged) != expected_tensors:
            raise RuntimeError(f"weight update incomplete: {len(staged)} of {expected_tensors} tensors arrived")
        self.reload_weights(weights_iterator=iter(staged.items()))
        return len(staged)

    def wavalign_reseed(self, seed: int) -> None:
        """Restart the sampler's random stream (vLLM samples from this process's torch generator)."""
        torch.manual_seed(seed)
