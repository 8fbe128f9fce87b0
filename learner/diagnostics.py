"""Per-step diagnostics of the objective (method.md §11, §13). Pure module: torch only.

- per-modality predictive entropy: the mean over text (speech) tokens of the entropy of the
  policy's next-token distribution;
- per-modality gradient norms — the paper's gradient-imbalance diagnostic, our addition: the norm
  of the gradient that the policy-gradient term would have if it trained on the text tokens only,
  and on the speech tokens only (computed every N steps: it costs two extra backward passes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from learner.masks import ModalityMasks


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits -> (B, T) entropy in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def modality_entropy(logits: torch.Tensor, masks: ModalityMasks) -> dict[str, float]:
    entropy = token_entropy(logits.detach())
    out = {}
    for name, mask in (
        ("text_entropy", masks.text),
        ("speech_entropy", masks.speech),
        ("total_entropy", masks.completion),
    ):
        count = mask.sum()
        out[name] = float((entropy * mask).sum() / count) if count else 0.0
    return out


def grad_norm(loss: torch.Tensor, params: Iterable[torch.Tensor]) -> float:
    """L2 norm of d loss / d params, without touching .grad (the graph is kept for the real backward)."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) or torch.tensor(0.0)))


MISMATCH_KEYS = (
    "mismatch_text_mean_abs",
    "mismatch_text_max_abs",
    "mismatch_speech_mean_abs",
    "mismatch_speech_max_abs",
    "mismatch_kl",
)


class LogprobMismatch:
    """The mismatch of one step's rollout tokens, added micro-batch by micro-batch (exact token
    means over the whole step, whatever the micro-batching)."""

    def __init__(self) -> None:
        self.abs_sum = {"text": 0.0, "speech": 0.0}
        self.count = {"text": 0, "speech": 0}
        self.abs_max = {"text": 0.0, "speech": 0.0}
        self.kl_sum, self.tokens = 0.0, 0

    def add(self, learner_logp: torch.Tensor, sampler_logp: torch.Tensor, masks: ModalityMasks) -> None:
        delta = learner_logp.detach().float() - sampler_logp.float()
        for kind in ("text", "speech"):
            values = delta[getattr(masks, kind)].abs()
            if values.numel():
                self.abs_sum[kind] += float(values.sum())
                self.count[kind] += values.numel()
                self.abs_max[kind] = max(self.abs_max[kind], float(values.max()))
        sampled = delta[masks.completion]
        self.kl_sum += float((sampled.exp() - 1 - sampled).sum())
        self.tokens += sampled.numel()

    def summary(self) -> dict[str, float]:
        """MISMATCH_KEYS; NaN where the step had no such token."""
        out = {}
        for kind in ("text", "speech"):
            n = self.count[kind]
            out[f"mismatch_{kind}_mean_abs"] = self.abs_sum[kind] / n if n else math.nan
            out[f"mismatch_{kind}_max_abs"] = self.abs_max[kind] if n else math.nan
        out["mismatch_kl"] = self.kl_sum / self.tokens if self.tokens else math.nan
        return out
