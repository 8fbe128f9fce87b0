"""vLLM worker extension (runs inside each vLLM worker process): receives new policy weights as
safetensors buckets and reloads them in place through the worker's public `reload_weights`.

Installed with `LLM(worker_extension_cls="actors.weight_receiver.WeightReceiver")` and driven by
`LLM.collective_rpc(<method name>, args=...)`. Buckets arrive as bytes, which serialise cleanly
across vLLM's RPC (lists of tensors do not). The update is staged: the model is only touched once
every bucket has arrived, so a failed transfer never leaves a half-updated engine. Imports no vLLM.
"""

from __future__ import annotations

import safetensors.torch


class WeightReceiver:
    """Mixed into vLLM's worker class; `self` is the vLLM worker."""

    def wavalign_begin_update(self, version: int) -> None:
        self._wavalign_staged = {}
        self._wavalign_version = version

    def wavalign_add_bucket(self, blob: bytes) -> int:
        bucket = safetensors.torch.load(blob)
        self._wavalign_staged.update(bucket)
        return len(bucket)

    def wavalign_finish_update(self, expected_tensors: int) -> int:
        staged, self._wavalign_staged = self._wavalign_staged, {}
        if len(staged) != expected_tensors:
            raise RuntimeError(f"weight update incomplete: {len(staged)} of {expected_tensors} tensors arrived")
        self.reload_weights(weights_iterator=iter(staged.items()))
        return self._wavalign_version
