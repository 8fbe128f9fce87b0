"""vLLM worker extension (runs inside each vLLM worker process): registers the project's
object_store weight-transfer backend there (vLLM builds the worker's transfer engine when it loads
the model, after the extension is imported), and reseeds the sampler.

Installed with `LLM(worker_extension_cls="actors.weight_receiver.WeightReceiver")` and driven by
`LLM.collective_rpc(<method name>, args=...)`.
"""

from __future__ import annotations

import torch

from actors.weight_transfer import register_backends

register_backends()


class WeightReceiver:
    """Mixed into vLLM's worker class; `self` is the vLLM worker."""

    def wavalign_reseed(self, seed: int) -> None:
        """Restart the sampler's random stream (vLLM samples from this process's torch generator)."""
        torch.manual_seed(seed)
