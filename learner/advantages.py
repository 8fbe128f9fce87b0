"""Group-relative advantages (method.md §3.1). Pure module: torch only.

For the G rollouts of one prompt with rewards r (shape (P, G) for P prompts):

    A_i = (r_i - mean(r)) / (std(r) + eps)        std: population (the canonical masked trainer)

The same A_i applies to every token of rollout i. A group whose rewards are all equal gets A = 0,
so it contributes no policy gradient. A non-finite reward (the reward workers replace them, so one
here is a bug upstream) carries no signal: its rollout gets A = 0 and its group's mean and std
come from the others, so advantages are always finite.
"""

from __future__ import annotations

import torch

EPS = 1e-4


def group_advantages(rewards: torch.Tensor, eps: float = EPS, unbiased_std: bool = False) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages. `unbiased_std=True` is the parent trainers' variant (§15.8)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group_size >= 2), got {tuple(rewards.shape)}")
    rewards = rewards.double()
    finite = torch.isfinite(rewards)
    if not finite.all():
        return _advantages_of_finite(rewards, finite, eps, unbiased_std)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=unbiased_std)
    return (rewards - mean) / (std + eps)


def _advantages_of_finite(rewards: torch.Tensor, finite: torch.Tensor, eps: float, unbiased_std: bool) -> torch.Tensor:
    kept = torch.where(finite, rewards, torch.zeros_like(rewards))
    n = finite.sum(dim=1, keepdim=True).double()
    mean = kept.sum(dim=1, keepdim=True) / n.clamp(min=1)
    squares = torch.where(finite, (kept - mean) ** 2, torch.zeros_like(rewards)).sum(dim=1, keepdim=True)
    std = (squares / (n - float(unbiased_std)).clamp(min=1)).sqrt()
    return torch.where(finite, (kept - mean) / (std + eps), torch.zeros_like(rewards))
