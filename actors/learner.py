"""LearnerWorker: applies the WavAlign update to the policy with DeepSpeed.

One `train_step` = one optimizer step over the step's rollout rows (policy gradient on the chosen
modality, text by default) and SFT rows (teacher forcing on the references, all tokens by default),
mixed by the step's λ, in micro-batches whose gradients accumulate to the whole batch's. A plain
class; the driver makes it a Ray worker at the call site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from learner.deepspeed_engine import DeepSpeedEngine
from learner.diagnostics import modality_entropy
from learner.loss import rl_loss, sft_loss, token_logprobs, token_weights, with_group_fallback
from learner.masks import ModalityMasks, modality_masks
from wavalign.config import PipelineConfig
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.weights import pack_buckets


@dataclass(frozen=True)
class TrainBatch:
    """One step's data. Rollout rows come grouped: G consecutive rows per prompt."""

    rollout_prompts: Sequence[Sequence[int]]  # (N,) prompt ids of each rollout row
    rollout_responses: Sequence[Sequence[int]]  # (N,) response ids
    advantages: Sequence[float]  # (N,)
    sft_prompts: Sequence[Sequence[int]]  # (P,) prompt ids
    sft_targets: Sequence[Sequence[int]]  # (P,) reference answer ids (interleaved, ending with eos)
    lam: float  # the step's mixing weight (from the λ controller, global over the step's groups)


@dataclass(frozen=True)
class _Rows:
    """Prompt + response rows, right-padded; `positions` index the logits that score the response."""

    input_ids: torch.Tensor  # (B, L)
    attention: torch.Tensor  # (B, L)
    responses: torch.Tensor  # (B, T) response ids, pad-filled
    starts: torch.Tensor  # (B,) index of each response's first token in input_ids


class LearnerWorker:
    def __init__(self, model_path: str, cfg: PipelineConfig, rank: int = 0, world_size: int = 1, master_port: int = 29500) -> None:
        _, self.layout = load_tokenizer_and_layout(model_path, cfg.model.layout)
        self.cfg, self.model_path = cfg, model_path
        self.engine = DeepSpeedEngine(
            model_path, cfg.learner, cfg.run.steps, rank=rank, world_size=world_size, master_port=master_port
        )

    def _rows(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> _Rows:
        pad = self.layout.pad_id
        width = max(len(p) + len(r) for p, r in zip(prompts, responses))
        t = max(len(r) for r in responses)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        response_ids = torch.full((len(prompts), t), pad, dtype=torch.long)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids[i, : len(p) + len(r)] = torch.tensor([*p, *r])
            attention[i, : len(p) + len(r)] = 1
            response_ids[i, : len(r)] = torch.tensor(r)
        return _Rows(ids, attention, response_ids, torch.tensor([len(p) for p in prompts]))

    def _response_logits(self, rows: _Rows, part: slice) -> torch.Tensor:
        """(b, T, V) logits scoring each response token of rows[part]."""
        logits = self.engine.engine(input_ids=rows.input_ids[part], attention_mask=rows.attention[part]).logits
        t = rows.responses.shape[1]
        # position start-1+k predicts response token k; clamp the tail (padding, masked out later)
        index = (rows.starts[part, None] - 1 + torch.arange(t)).clamp(max=logits.shape[1] - 1)
        return logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1]))

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        algo, micro = self.cfg.algorithm, self.cfg.learner.micro_batch_rows
        rl_rows = self._rows(batch.rollout_prompts, batch.rollout_responses)
        sft_rows = self._rows(batch.sft_prompts, batch.sft_targets)
        rl_masks = modality_masks(rl_rows.responses, self.layout)
        sft_masks = modality_masks(sft_rows.responses, self.layout)
        rl_w = with_group_fallback(
            token_weights(rl_masks, algo.rl_token_type), rl_masks.completion, self.cfg.rollout.group_size
        )
        sft_w = token_weights(sft_masks, algo.sft_token_type)
        advantages = torch.tensor(batch.advantages, dtype=torch.float32)
        n, m, lam = len(batch.rollout_prompts), len(batch.sft_prompts), batch.lam
        stats: dict[str, float] = {"rl_loss": 0.0, "sft_loss": 0.0}

        def rl_part(part: slice):
            def loss() -> torch.Tensor:
                logits = self._response_logits(rl_rows, part)
                sub = _slice(rl_masks, part)
                terms = rl_loss(token_logprobs(logits, rl_rows.responses[part]), advantages[part], rl_w[part], sub)
                share = (part.stop - part.start) / n
                stats["rl_loss"] += float(terms.loss.detach()) * share
                for key, value in modality_entropy(logits, sub).items():
                    stats[key] = stats.get(key, 0.0) + value * share
                return lam * terms.loss * share

            return loss

        def sft_part(part: slice):
            def loss() -> torch.Tensor:
                logits = self._response_logits(sft_rows, part)
                value = sft_loss(token_logprobs(logits, sft_rows.responses[part]), sft_w[part])
                share = (part.stop - part.start) / m
                stats["sft_loss"] += float(value.detach()) * share
                return (1 - lam) * value * share

            return loss

        parts = [rl_part(slice(i, min(i + micro, n))) for i in range(0, n, micro)]
        parts += [sft_part(slice(i, min(i + micro, m))) for i in range(0, m, micro)]
        result = self.engine.step(parts)
        return {**stats, **result, "lambda": lam}

    def full_weights(self):
        return list(self.engine.full_weights())

    def weight_buckets(self, bucket_bytes: int) -> list[tuple[bytes, int]]:
        """The policy's weights as safetensors buckets for the rollout pool (see wavalign.weights)."""
        return list(pack_buckets(self.engine.full_weights(), bucket_bytes))

    def save_hf(self, directory: str) -> None:
        self.engine.save_hf(directory, self.model_path)


def _slice(masks: ModalityMasks, part: slice) -> ModalityMasks:
    return ModalityMasks(*(x[part] for x in (masks.completion, masks.text, masks.speech, masks.boundary)))
