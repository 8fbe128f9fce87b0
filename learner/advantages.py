"""Group-relative advantages (method.md §3.1). Pure module: torch only.

For the G rollouts of one prompt with rewards r (shape (P, G) for P prompts):

    A_i = (r_i - mean(r)) / (std(r) + eps)        std: population (the canonical masked trainer)

The same A_i applies to every token of rollout i. A group whose rewards are all equal gets A = 0,
so it contributes no policy gradient.
"""

from __future__ import annotations

import torch

EPS = 1e-4


def group_advantages(rewards: torch.Tensor, eps: float = EPS, unbiased_std: bool = False) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages. `unbiased_std=True` is the parent trainers' variant (§15.8)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group_size >= 2), got {tuple(rewards.shape)}")
    rewards = rewards.double()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=unbiased_std)
    return (rewards - mean) / (std + eps)
