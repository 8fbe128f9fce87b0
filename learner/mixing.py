"""The adaptive mixing coefficient λ (method.md §6). Pure module: torch only.

Per prompt group j with rewards R_j (the G rollouts of one prompt):

    info_j = clip(Var(R_j) / var_max, 0, 1)          Var: population; var_max = ((hi - lo) / 2)^2
    gate_j = sigmoid(k (max(R_j) - tau))             tau = (lo + hi) / 2
    raw_j  = lambda_max * gate_j * info_j
    lam_j  = raw_j                                   on the first step
           = (1 - alpha) raw_j + alpha * state       afterwards (state = the previous step's λ)
    lam_j  = clip(lam_j, 0, lambda_max)
    λ      = state = mean_j lam_j                     the step's mixing weight

and the step's loss is L = λ L_RL + (1 - λ) L_SFT. On the 1-5 judge scale var_max = 4 and tau = 3,
the paper's constants. λ is computed from the *global* set of the step's groups, so every
data-parallel rank applies the same weight (method §15 item 6); `fixed` mode uses a constant.
A group with a non-finite reward (the reward workers replace them, so one here is a bug upstream)
is left out of λ and its statistics; a step with no finite group keeps the previous λ (0 on the
first step). λ and the EMA state are therefore always finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LambdaSettings:
    lambda_max: float = 0.8
    ema_alpha: float = 0.9
    gate_slope: float = 5.0
    scale_min: float = 1.0
    scale_max: float = 5.0
    adaptive: bool = True
    fixed_weight: float = 0.7  # λ when not adaptive

    @property
    def var_max(self) -> float:
        """The largest population variance on the scale: half the group at each end."""
        return ((self.scale_max - self.scale_min) / 2) ** 2

    @property
    def threshold(self) -> float:
        return (self.scale_min + self.scale_max) / 2


@dataclass(frozen=True)
class GroupGates:
    """Per group, each (P,)."""

    reward_max: torch.Tensor
    reward_var: torch.Tensor
    info: torch.Tensor
    gate: torch.Tensor
    raw: torch.Tensor


@dataclass(frozen=True)
class LambdaStep:
    """What one step's λ came from (means over the step's groups), for the metrics."""

    lam: float
    lambda_raw: float
    gate_reward: float
    gate_info: float
    reward_max_mean: float
    reward_var_mean: float
    zero_var_group_frac: float


def group_gates(rewards: torch.Tensor, s: LambdaSettings) -> GroupGates:
    """(P, G) rewards -> the per-group gates of §6.1."""
    rewards = rewards.double()
    var = rewards.var(dim=1, unbiased=False)
    rmax = rewards.max(dim=1).values
    info = (var / s.var_max).clamp(0.0, 1.0)
    gate = torch.sigmoid(s.gate_slope * (rmax - s.threshold))
    return GroupGates(reward_max=rmax, reward_var=var, info=info, gate=gate, raw=s.lambda_max * gate * info)


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if len(values) else 0.0


class LambdaController:
    """Holds the EMA state across steps; `step(rewards)` gives this step's λ and updates the state."""

    def __init__(self, settings: LambdaSettings) -> None:
        self.settings = settings
        self.state: float | None = None

    def step(self, rewards: torch.Tensor) -> LambdaStep:
        return self.apply(group_gates(rewards, self.settings))

    def apply(self, g: GroupGates) -> LambdaStep:
        """This step's λ from its groups' gates (gathered one group at a time: see step_stats)."""
        s = self.settings
        finite = torch.isfinite(g.raw)
        if not finite.all():
            g = GroupGates(*(field[finite] for field in (g.reward_max, g.reward_var, g.info, g.gate, g.raw)))
        if s.adaptive:
            per_group = g.raw if self.state is None else (1 - s.ema_alpha) * g.raw + s.ema_alpha * self.state
            lam = float(per_group.clamp(0.0, s.lambda_max).mean()) if len(per_group) else (self.state or 0.0)
            self.state = lam
        else:
            lam = min(max(s.fixed_weight, 0.0), 1.0)
        return LambdaStep(
            lam=lam,
            lambda_raw=_mean(g.raw),
            gate_reward=_mean(g.gate),
            gate_info=_mean(g.info),
            reward_max_mean=_mean(g.reward_max),
            reward_var_mean=_mean(g.reward_var),
            zero_var_group_frac=_mean(g.reward_var == 0),
        )

    def state_dict(self) -> dict[str, float | None]:
        return {"state": self.state}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.state = state["state"]
