"""The DPO variant (method.md §8). Pure module: torch only.

Per pair (w = chosen, l = rejected), with s(y) the SUM of log-probabilities over the allowed label
tokens (dpo_token_type: text by default — the semantic channel):

    z = beta * [(s_pi(w) - s_pi(l)) - (s_ref(w) - s_ref(l))]
    L = mean over pairs of -log sigmoid(z)          beta = 0.2 (the authors' script)

Pairs in which either side has no allowed token are skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(logp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, T) token log-probs and allowed-token weights -> (B,) sums."""
    return (logp * weights).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    usable: torch.Tensor,
    beta: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss over usable pairs, preference accuracy). All inputs (B,); `usable` (B,) bool: both sides
    have allowed tokens. No usable pair gives a zero loss that still has a graph."""
    z = beta * ((policy_chosen - policy_rejected) - (ref_chosen - ref_rejected))
    if not bool(usable.any()):
        return (z * 0).sum(), torch.tensor(0.0)
    z = z[usable]
    return -F.logsigmoid(z).mean(), (z > 0).float().mean().detach()
