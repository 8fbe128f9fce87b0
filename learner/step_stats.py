"""A step's reward statistics, fed one prompt group at a time as its rewards arrive. Pure module:
torch only.

The driver streams: each group's gates (reward max, variance, information and reward gates, raw λ;
method §6.1) are computed the moment its G rewards are in, while other groups are still being
sampled or scored. Only λ itself needs every group of the step (it is their mean, then EMA), so
`finish` is the one barrier.
"""

from __future__ import annotations

import torch

from learner.mixing import GroupGates, LambdaController, LambdaSettings, LambdaStep, group_gates


class StepStats:
    def __init__(self, settings: LambdaSettings, group_size: int) -> None:
        self.settings, self.group_size = settings, group_size
        self.rewards: dict[str, list[float]] = {}  # prompt id -> the group's G rewards, in arrival order
        self._gates: dict[str, GroupGates] = {}

    def add_group(self, prompt_id: str, rewards: list[float]) -> GroupGates:
        if prompt_id in self.rewards:
            raise ValueError(f"group {prompt_id!r} arrived twice in one step")
        if len(rewards) != self.group_size:
            raise ValueError(f"group {prompt_id!r}: {len(rewards)} rewards, expected {self.group_size}")
        self.rewards[prompt_id] = list(rewards)
        self._gates[prompt_id] = gates = group_gates(torch.tensor([rewards], dtype=torch.float64), self.settings)
        return gates

    def gates(self, prompt_ids: list[str]) -> GroupGates:
        """The gates of the given groups, stacked in that order."""
        parts = [self._gates[p] for p in prompt_ids]
        return GroupGates(*(torch.cat([getattr(g, f) for g in parts]) for f in GroupGates.__dataclass_fields__))

    def reward_matrix(self, prompt_ids: list[str]) -> torch.Tensor:
        """(P, G) rewards of the given groups, in that order."""
        return torch.tensor([self.rewards[p] for p in prompt_ids], dtype=torch.float64)

    def finish(self, controller: LambdaController, prompt_ids: list[str]) -> LambdaStep:
        """λ over the given groups (all of the step's, or one rank's); advances the controller."""
        self._check_complete(prompt_ids)
        return controller.apply(self.gates(prompt_ids))

    def reward_aggregates(self, prompt_ids: list[str]) -> dict[str, float]:
        """Mean and population std of every reward of the given groups."""
        self._check_complete(prompt_ids)
        rewards = self.reward_matrix(prompt_ids)
        return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False))}

    def _check_complete(self, prompt_ids: list[str]) -> None:
        missing = [p for p in prompt_ids if p not in self.rewards]
        if missing:
            raise ValueError(f"groups without rewards: {missing}")
