"""The records passed between workers and the driver, in one place. Pure module: standard library only.

    driver --(prompt ids)--> RolloutWorker --RolloutRecord--> driver --RewardRequest--> RewardWorker
    RewardWorker --RewardResult--> driver --TrainBatch | DpoBatch--> LearnerWorker
    LearnerWorker (rank 0, after sending the weights) --SyncReport--> driver

They are frozen dataclasses of plain Python values, so Ray pickles them cheaply and a test can build
them by hand. Sizes: N rollout rows (P prompts x G samples, grouped prompt by prompt), P SFT rows,
B DPO pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RolloutRecord:
    """One sampled response of one prompt."""

    prompt_id: str
    sample_index: int
    response_token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # the sampler's logprob of each response token
    modality: tuple[int, ...]  # learner.masks codes: 1 text, 2 speech, 3 BOA/EOA, 0 outside the completion
    finish_reason: str
    policy_version: int


@dataclass(frozen=True)
class RewardRequest:
    prompt_id: str
    sample_index: int
    response_token_ids: tuple[int, ...]
    question_text: str
    reference_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the toy task's `answer`


@dataclass(frozen=True)
class RewardResult:
    prompt_id: str
    sample_index: int
    scores: dict[str, float]  # one column per reward function
    total: float  # the weighted sum (weights sum to 1: stays on the scale)


@dataclass(frozen=True)
class TrainBatch:
    """One step's data for one learner rank. Rollout rows come grouped: G consecutive rows per prompt."""

    rollout_prompts: Sequence[Sequence[int]]  # (N,) prompt ids of each rollout row
    rollout_responses: Sequence[Sequence[int]]  # (N,) response ids
    advantages: Sequence[float]  # (N,)
    sft_prompts: Sequence[Sequence[int]]  # (P,) prompt ids
    sft_targets: Sequence[Sequence[int]]  # (P,) reference answer ids (interleaved, ending with eos)
    lam: float  # the step's mixing weight (from the λ controller, global over the step's groups)
    staleness: int = 0  # policy versions between the rollouts' sampler and the weights trained now
    # (N,) the sampler's per-token logprobs: the rollout-vs-learner mismatch metric, and the
    # importance ratio of stale rollouts
    rollout_logprobs: Sequence[Sequence[float]] | None = None
    # The weight of this rank's SFT mean: ranks x (its SFT rows with sft_token_type tokens) / (the
    # step's), so that the ranks' average is the step's mean over such rows; 1 with one rank.
    sft_rank_weight: float = 1.0


@dataclass(frozen=True)
class DpoBatch:
    """One DPO step's pairs for one learner rank."""

    prompts: Sequence[Sequence[int]]  # (B,)
    chosen: Sequence[Sequence[int]]  # (B,) preferred responses (e.g. the reference)
    rejected: Sequence[Sequence[int]]  # (B,) dispreferred responses (offline pairs or fresh samples)


@dataclass
class SyncReport:
    """One sync as the learner's rank 0 saw it: seconds per phase (the object_store backend: pack =
    gather and write into the weight region / the object store, transfer = workers fetching chunks
    from the store, load = vLLM taking them in, finish), bytes sent, and the workers that finished
    (what each said: pid, version) or failed (why)."""

    phases: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    finished: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
