"""One step's data, from sampled records and rewards to what the learner and the outputs need.

- `Group`: one prompt's G records and rewards, in sample order;
- advantages per group (method §3.1) and the λ of each learner rank (global by default: every
  rank gets the λ of all the step's groups; `per_rank` is the authors' code, method §15.6);
- the learner's TrainBatch of each data-parallel rank (contiguous, equal shares of the groups);
- DPO (algorithm.objective: dpo): the step's pairs — each group's best vs worst response by reward
  (online, the pair builder's rule) or the data rows' reference vs rejected (offline) — and each
  rank's DpoBatch;
- one rollouts.parquet row per response.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from learner.advantages import group_advantages
from learner.dpo_pairs import best_and_worst
from learner.masks import SPEECH, TEXT
from learner.mixing import LambdaController, LambdaStep
from learner.step import sft_rank_weights
from learner.step_stats import StepStats
from wavalign.data import PromptRow
from wavalign.layout import SpeechLayout
from wavalign.messages import DpoBatch, RewardResult, RolloutRecord, TrainBatch


@dataclass(frozen=True)
class Group:
    index: int  # position of the prompt in the step
    row: PromptRow
    records: tuple[RolloutRecord, ...]  # sorted by sample_index
    rewards: tuple[RewardResult, ...]  # the same order


def assemble_groups(
    prompts: Sequence[PromptRow],
    records: Sequence[RolloutRecord],
    rewards: Mapping[tuple[str, int], RewardResult],
    group_size: int,
) -> list[Group]:
    """Every prompt's group, checked complete: G records, each scored once."""
    by_prompt: dict[str, list[RolloutRecord]] = {}
    for record in records:
        by_prompt.setdefault(record.prompt_id, []).append(record)
    groups = []
    for index, row in enumerate(prompts):
        group = sorted(by_prompt.get(row.row_id, []), key=lambda r: r.sample_index)
        if [r.sample_index for r in group] != list(range(group_size)):
            raise RuntimeError(
                f"prompt {row.row_id!r}: samples {[r.sample_index for r in group]}, expected 0..{group_size - 1}"
            )
        groups.append(Group(index, row, tuple(group), tuple(rewards[(row.row_id, r.sample_index)] for r in group)))
    return groups


def advantages_of(groups: Sequence[Group], unbiased_std: bool) -> torch.Tensor:
    """(P, G) group-relative advantages."""
    rewards = torch.tensor([[r.total for r in g.rewards] for g in groups], dtype=torch.float64)
    return group_advantages(rewards, unbiased_std=unbiased_std)


def rank_slices(n_groups: int, world_size: int) -> list[slice]:
    share = n_groups // world_size
    return [slice(r * share, (r + 1) * share) for r in range(world_size)]


def step_lambdas(
    stats: StepStats, controllers: Sequence[LambdaController], groups: Sequence[Group]
) -> tuple[list[LambdaStep], dict[str, float]]:
    """One controller: λ over every group of the step, for every rank. One controller per rank
    (per_rank scope): each rank's λ from its own groups."""
    ids = [g.row.row_id for g in groups]
    parts = [slice(None)] if len(controllers) == 1 else rank_slices(len(groups), len(controllers))
    steps = [stats.finish(c, ids[part]) for c, part in zip(controllers, parts)]
    return steps, stats.reward_aggregates(ids)


def learner_batches(
    groups: Sequence[Group],
    advantages: torch.Tensor,
    lambdas: Sequence[float],
    world_size: int,
    layout: SpeechLayout,
    sft_token_type: str,
    staleness: int = 0,
) -> list[TrainBatch]:
    """Each rank's contiguous share of the groups with their G rollouts and their SFT rows (weighed
    so that the ranks' SFT terms average to the step's mean over the references that have
    sft_token_type tokens)."""
    batches = []
    parts = rank_slices(len(groups), world_size)
    references = [[g.row.reference_token_ids for g in groups[part]] for part in parts]
    sft_weights = sft_rank_weights(references, layout, sft_token_type)
    for rank, part in enumerate(parts):
        mine = groups[part]
        records = [r for g in mine for r in g.records]
        batches.append(
            TrainBatch(
                rollout_prompts=[g.row.prompt_token_ids for g in mine for _ in g.records],
                rollout_responses=[r.response_token_ids for r in records],
                advantages=advantages[part].flatten().tolist(),
                sft_prompts=[g.row.prompt_token_ids for g in mine],
                sft_targets=[g.row.reference_token_ids for g in mine],
                lam=lambdas[rank if len(lambdas) > 1 else 0],
                staleness=staleness,
                rollout_logprobs=[r.logprobs for r in records],  # the mismatch metric; stale: the ratio
                sft_rank_weight=sft_weights[rank],
            )
        )
    return batches


@dataclass(frozen=True)
class DpoPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def online_dpo_pairs(groups: Sequence[Group], min_gap: float, chosen_source: str) -> list[DpoPair]:
    """Each group's best vs worst response by total reward, if they differ by at least min_gap (ties:
    the first sample); chosen_source "reference": the prompt's reference answer is the chosen side."""
    pairs = []
    for g in groups:
        picked = best_and_worst([(r, result.total) for r, result in zip(g.records, g.rewards)], min_gap)
        if picked is not None:
            best, worst, _ = picked
            chosen = g.row.reference_token_ids if chosen_source == "reference" else best.response_token_ids
            pairs.append(DpoPair(g.row.prompt_token_ids, tuple(chosen), tuple(worst.response_token_ids)))
    return pairs


def offline_dpo_pairs(rows: Sequence[PromptRow]) -> list[DpoPair]:
    """The data's own pairs: the reference is the chosen side, rejected_token_ids the rejected one."""
    return [
        DpoPair(r.prompt_token_ids, r.reference_token_ids, r.rejected_token_ids) for r in rows if r.rejected_token_ids
    ]


def dpo_batches(pairs: Sequence[DpoPair], world_size: int) -> list[DpoBatch]:
    """Each rank's equal, contiguous share of the pairs (a remainder smaller than the ranks is left
    out: every rank's loss is a mean over the same number of pairs); [] when there are too few."""
    share = len(pairs) // world_size
    if share == 0:
        return []
    parts = [pairs[rank * share : (rank + 1) * share] for rank in range(world_size)]
    return [DpoBatch([p.prompt for p in part], [p.chosen for p in part], [p.rejected for p in part]) for part in parts]


def rollout_rows(
    step: int, groups: Sequence[Group], advantages: torch.Tensor, decode_text: Callable[[RolloutRecord], str]
) -> list[dict]:
    """One rollouts.parquet row per response."""
    rows = []
    for g in groups:
        for record, result in zip(g.records, g.rewards):
            rows.append(
                {
                    "step": step,
                    "prompt_id": g.row.row_id,
                    "group_index": g.index,
                    "sample_index": record.sample_index,
                    "policy_version": record.policy_version,
                    "reward": result.total,
                    **{f"reward_{name}": value for name, value in sorted(result.scores.items())},
                    "advantage": float(advantages[g.index, record.sample_index]),
                    "n_text_tokens": sum(1 for m in record.modality if m == TEXT),
                    "n_speech_tokens": sum(1 for m in record.modality if m == SPEECH),
                    "finish_reason": record.finish_reason,
                    "text": decode_text(record),
                    "response_token_ids": list(record.response_token_ids),
                }
            )
    return rows
