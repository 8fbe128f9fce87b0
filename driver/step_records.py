"""The records a step's phases hand each other in launch.py's loop:

Pipeline.sample          -> SampledStep    prompts, their rollouts, the reward stream scoring them
Pipeline.assemble        -> ScoredStep     groups, advantages, λ: what the learner and the outputs need
Pipeline.start_learning  -> LearningStep   the learner step under way (the driver samples meanwhile)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from actors.learner_group import Pending
from driver.reward_stream import RewardStream
from driver.step_data import Group
from learner.mixing import LambdaStep
from wavalign.data import PromptRow
from wavalign.messages import RolloutRecord


@dataclass(frozen=True)
class SampledStep:
    """A step's prompts and their G responses each, scored chunk by chunk as they came in."""

    step: int
    prompts: Sequence[PromptRow]  # (P,)
    records: Sequence[RolloutRecord]  # (P * G,) in the order the rollout pool returned them
    scoring: RewardStream  # `finish` waits for the last chunk's rewards
    generation_seconds: float


@dataclass(frozen=True)
class ScoredStep:
    step: int
    groups: Sequence[Group]  # (P,) each prompt's records and rewards, in sample order
    advantages: torch.Tensor  # (P, G) group-relative
    lambdas: Sequence[LambdaStep]  # one per learner rank, or one for all (lambda_scope: global)
    reward_aggregates: dict[str, float]  # the step's reward statistics for the metrics


@dataclass(frozen=True)
class LearningStep:
    step: int
    pending: Pending | None  # the ranks' step; None when there is nothing to learn from (DPO: no pair)
    staleness: int  # policy versions between the oldest rollout's sampler and the weights trained now
    extra: dict[str, float] = field(default_factory=dict)  # DPO: the pairs' side lengths
