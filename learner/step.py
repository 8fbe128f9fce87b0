"""One learner rank's step as pure code: the WavAlign step (method §7) and the DPO step (§8), cut into
micro-batches whose losses add up to the whole batch's. Pure module: torch and the base only; the
model is an argument (the DeepSpeed engine in LearnerWorker, any module whose output has `.logits`
in a test), and the optimizer step is the caller's (learner/deepspeed_engine.py: `step(micro_losses)`).

    rows     prompt + response per row, right-padded: input ids and attention (B, L), responses (B, T)
    logits   (b, T, V): position start-1+k of a row scores its response token k
    shares   micro-batch i of a term's n rows weighs share_i = |i| / n; every term is a mean over its
             rows, so sum_i share_i L(i) = L(batch): the accumulated gradient is the whole batch's
             (the SFT term counts only its rows with sft_token_type tokens in |i| and n, and weighs
             the rank's mean by batch.sft_rank_weight, so that the ranks' average is the step's mean)
    mix      mixed_loss is linear in its two terms, so the batch's λ L_RL + (1 - λ) L_SFT is
             sum_i share_i mixed_loss(λ, L_RL(i), 0) + sum_j share_j mixed_loss(λ, 0, L_SFT(j)):
             an RL micro-batch is the mix with the SFT term zero, an SFT micro-batch the converse
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from learner.diagnostics import LogprobMismatch, grad_norm, modality_entropy
from learner.dpo import dpo_loss, sequence_logps
from learner.loss import (
    RLTerms,
    mixed_loss,
    rl_loss,
    sft_loss,
    supervised_rows,
    token_logprobs,
    token_weights,
    with_group_fallback,
)
from learner.masks import ModalityMasks, modality_masks
from wavalign.config import AlgorithmConfig
from wavalign.layout import SpeechLayout
from wavalign.messages import DpoBatch, TrainBatch

MicroLoss = Callable[[], torch.Tensor]  # one micro-batch's forward; returns its weighted share of the loss


@dataclass(frozen=True)
class Rows:
    """Prompt + response rows, right-padded; `starts` locate each response inside input_ids."""

    input_ids: torch.Tensor  # (B, L)
    attention: torch.Tensor  # (B, L)
    responses: torch.Tensor  # (B, T) response ids, pad-filled
    starts: torch.Tensor  # (B,) index of each response's first token in input_ids
    lengths: torch.Tensor  # (B,) response tokens of each row

    def supervised_masks(self, layout: SpeechLayout) -> ModalityMasks:
        """The masks of rows whose responses are supervised whole (references, DPO sides)."""
        return modality_masks(self.responses, layout, self.lengths)


def padded_rows(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device: torch.device | str
) -> Rows:
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    t = max(len(r) for r in responses)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor([*p, *r])
        attention[i, : len(p) + len(r)] = 1
        response_ids[i, : len(r)] = torch.tensor(r)
    starts = torch.tensor([len(p) for p in prompts])
    lengths = torch.tensor([len(r) for r in responses])
    return Rows(*(x.to(device) for x in (ids, attention, response_ids, starts, lengths)))


def sft_rank_weights(
    targets_per_rank: Sequence[Sequence[Sequence[int]]], layout: SpeechLayout, token_type: str
) -> list[float]:
    """Each rank's TrainBatch.sft_rank_weight: ranks x (its references with token_type tokens) / (the
    step's); 1.0 each when no reference has any (every rank's SFT term is then 0)."""
    taught = []
    for targets in targets_per_rank:
        rows = padded_rows([[]] * len(targets), targets, layout.pad_id, "cpu") if targets else None
        taught.append(
            float(supervised_rows(token_weights(rows.supervised_masks(layout), token_type)).sum()) if rows else 0.0
        )
    total = sum(taught)
    return [len(taught) * n / total if total else 1.0 for n in taught]


def response_logits(model: torch.nn.Module, rows: Rows, part: slice) -> torch.Tensor:
    """(b, T, V) logits of `model` scoring each response token of rows[part]."""
    logits = model(input_ids=rows.input_ids[part], attention_mask=rows.attention[part]).logits
    t = rows.responses.shape[1]
    # position start-1+k predicts response token k; clamp the tail (padding, masked out later)
    index = (rows.starts[part, None] - 1 + torch.arange(t, device=logits.device)).clamp(max=logits.shape[1] - 1)
    return logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1]))


def response_logprobs(model: torch.nn.Module, rows: Rows, part: slice) -> torch.Tensor:
    """(b, T) log-probabilities of rows[part]'s response tokens under `model`."""
    return token_logprobs(response_logits(model, rows, part), rows.responses[part])


def micro_batches(n: int, rows_per_micro: int) -> list[slice]:
    """Consecutive slices of at most rows_per_micro of n rows (rollout groups stay in order)."""
    return [slice(i, min(i + rows_per_micro, n)) for i in range(0, n, rows_per_micro)]


def share(part: slice, n: int) -> float:
    """A micro-batch's accumulation weight: its share of the term's n rows."""
    return (part.stop - part.start) / n


def slice_masks(masks: ModalityMasks, part: slice) -> ModalityMasks:
    return ModalityMasks(*(x[part] for x in (masks.completion, masks.text, masks.speech, masks.boundary)))


def sampler_logprobs(batch: TrainBatch, width: int, device: torch.device | str) -> torch.Tensor | None:
    """The logprobs vLLM returned for each rollout token, (N, T) (0 past a row's end); None when the
    batch carries none."""
    if batch.rollout_logprobs is None:
        return None
    sampled = torch.zeros(len(batch.rollout_logprobs), width)
    for i, (lps, ids) in enumerate(zip(batch.rollout_logprobs, batch.rollout_responses)):
        if len(lps) != len(ids):
            raise ValueError(f"rollout row {i}: {len(lps)} logprobs for {len(ids)} response tokens")
        sampled[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
    return sampled.to(device)


class MixedStep:
    """One rank's WavAlign step: RL rows (policy gradient on rl_token_type tokens, with the clipped
    ratio for stale rollouts and the k3 KL to `reference` when set) and SFT rows (teacher forcing on
    sft_token_type tokens), mixed by the batch's λ. `micro_losses` feeds the optimizer step; `stats`
    fills in (share-weighted means over the rows) as they run."""

    def __init__(
        self,
        batch: TrainBatch,
        layout: SpeechLayout,
        algo: AlgorithmConfig,
        group_size: int,
        device: torch.device | str = "cpu",
        reference: torch.nn.Module | None = None,
    ) -> None:
        self.algo, self.layout, self.reference, self.lam = algo, layout, reference, batch.lam
        self.rl_rows = padded_rows(batch.rollout_prompts, batch.rollout_responses, layout.pad_id, device)
        self.sft_rows = padded_rows(batch.sft_prompts, batch.sft_targets, layout.pad_id, device)
        self.rl_masks = modality_masks(self.rl_rows.responses, layout)
        rl_weights = token_weights(self.rl_masks, algo.rl_token_type)
        self.rl_weights = with_group_fallback(rl_weights, self.rl_masks.completion, group_size)
        self.sft_weights = token_weights(self.sft_rows.supervised_masks(layout), algo.sft_token_type)
        self.sft_taught, self.sft_rank_weight = supervised_rows(self.sft_weights), batch.sft_rank_weight
        self.advantages = torch.tensor(batch.advantages, dtype=torch.float32, device=device)
        self.sampler_logp = sampler_logprobs(batch, self.rl_rows.responses.shape[1], device)
        # rollouts older than the weights trained now: the clipped importance ratio against the sampler
        corrected = batch.staleness > 0 and algo.stale_correction != "none"
        if corrected and self.sampler_logp is None:
            raise ValueError(f"rollouts {batch.staleness} versions old need rollout_logprobs for the importance ratio")
        self.old_logp = self.sampler_logp if corrected else None
        self.mismatch = LogprobMismatch()
        self.n, self.m = len(batch.rollout_prompts), len(batch.sft_prompts)
        self.stats: dict[str, float] = dict.fromkeys(("rl_loss", "sft_loss", "kl_text", "kl_speech", "clip_frac"), 0.0)

    def micro_losses(self, policy: torch.nn.Module, rows_per_micro: int) -> list[MicroLoss]:
        """The RL micro-batches, then the SFT micro-batches, of at most rows_per_micro rows each."""
        rl = [partial(self.rl_micro_loss, policy, part) for part in micro_batches(self.n, rows_per_micro)]
        return rl + [partial(self.sft_micro_loss, policy, part) for part in micro_batches(self.m, rows_per_micro)]

    def rl_terms(self, logp: torch.Tensor, part: slice, weights: torch.Tensor) -> RLTerms:
        """The RL term of rollout rows[part] whose token log-probs are `logp`, on the tokens `weights` select."""
        ref_logp = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logp = response_logprobs(self.reference, self.rl_rows, part)
        return rl_loss(
            logp,
            self.advantages[part],
            weights,
            slice_masks(self.rl_masks, part),
            old_logp=self.old_logp[part] if self.old_logp is not None else None,
            clip_eps=self.algo.ratio_clip,
            ref_logp=ref_logp,
            beta_text=self.algo.kl_beta_text,
            beta_speech=self.algo.kl_beta_speech,
        )

    def rl_micro_loss(self, policy: torch.nn.Module, part: slice) -> torch.Tensor:
        logits = response_logits(policy, self.rl_rows, part)
        logp = token_logprobs(logits, self.rl_rows.responses[part])
        terms = self.rl_terms(logp, part, self.rl_weights[part])
        if self.sampler_logp is not None:
            self.mismatch.add(logp, self.sampler_logp[part], slice_masks(self.rl_masks, part))
            self.stats.update(self.mismatch.summary())
        weight = share(part, self.n)
        for key, value in (
            ("rl_loss", terms.loss),
            ("kl_text", terms.kl_text),
            ("kl_speech", terms.kl_speech),
            ("clip_frac", terms.clip_frac),
        ):
            self.stats[key] += float(value.detach()) * weight
        for key, value in modality_entropy(logits, slice_masks(self.rl_masks, part)).items():
            self.stats[key] = self.stats.get(key, 0.0) + value * weight
        return mixed_loss(self.lam, terms.loss, torch.zeros_like(terms.loss)) * weight

    def sft_micro_loss(self, policy: torch.nn.Module, part: slice) -> torch.Tensor:
        value = sft_loss(response_logprobs(policy, self.sft_rows, part), self.sft_weights[part])
        weight = float(self.sft_taught[part].sum() / self.sft_taught.sum().clamp_min(1)) * self.sft_rank_weight
        self.stats["sft_loss"] += float(value.detach()) * weight
        return mixed_loss(self.lam, torch.zeros_like(value), value) * weight

    def modality_grad_norms(self, module: torch.nn.Module, rows_per_micro: int) -> dict[str, float]:
        """The paper's gradient-imbalance diagnostic: the norm of the gradient the RL term would have
        on the text tokens alone and on the speech tokens alone (same advantages), sampled on the
        step's first micro-batch. `module` is the bare policy: a forward of its own, outside the
        optimizer's engine (whose post-backward hooks would treat it as a training backward)."""
        part = micro_batches(self.n, rows_per_micro)[0]
        logp = token_logprobs(response_logits(module, self.rl_rows, part), self.rl_rows.responses[part])
        masks = slice_masks(self.rl_masks, part)
        params = [p for p in module.parameters() if p.requires_grad]
        return {
            f"grad_norm_{kind}": grad_norm(self.rl_terms(logp, part, getattr(masks, kind).float()).loss, params)
            for kind in ("text", "speech")
        }


class DpoStep:
    """One rank's DPO step (method §8): sums of log-probs over the allowed tokens (dpo_token_type),
    against the frozen `reference`; pairs with no allowed token on a side are skipped. The loss is
    the mean over all usable pairs of the step, whatever the micro-batching; with
    algorithm.dpo_sft_weight > 0 an SFT anchor on the chosen side is added (§15.9)."""

    def __init__(
        self,
        batch: DpoBatch,
        layout: SpeechLayout,
        algo: AlgorithmConfig,
        reference: torch.nn.Module,
        device: torch.device | str = "cpu",
    ) -> None:
        self.algo, self.reference = algo, reference
        self.chosen = padded_rows(batch.prompts, batch.chosen, layout.pad_id, device)
        self.rejected = padded_rows(batch.prompts, batch.rejected, layout.pad_id, device)
        chosen_masks = self.chosen.supervised_masks(layout)
        self.w_chosen = token_weights(chosen_masks, algo.dpo_token_type)
        self.w_rejected = token_weights(self.rejected.supervised_masks(layout), algo.dpo_token_type)
        self.w_sft = token_weights(chosen_masks, algo.sft_token_type)
        self.usable = (self.w_chosen.sum(dim=1) > 0) & (self.w_rejected.sum(dim=1) > 0)
        self.n, self.n_usable = len(batch.prompts), max(int(self.usable.sum()), 1)
        self.stats = {
            "dpo_loss": 0.0,
            "dpo_accuracy": 0.0,
            "dpo_margin": 0.0,
            "dpo_pairs": float(self.usable.sum()),
            "sft_loss": 0.0,
        }

    def micro_losses(self, policy: torch.nn.Module, rows_per_micro: int) -> list[MicroLoss]:
        return [partial(self.micro_loss, policy, part) for part in micro_batches(self.n, rows_per_micro)]

    def micro_loss(self, policy: torch.nn.Module, part: slice) -> torch.Tensor:
        algo, usable = self.algo, self.usable[part]
        with torch.no_grad():
            ref_w = sequence_logps(response_logprobs(self.reference, self.chosen, part), self.w_chosen[part])
            ref_l = sequence_logps(response_logprobs(self.reference, self.rejected, part), self.w_rejected[part])
        chosen_logp = response_logprobs(policy, self.chosen, part)
        pol_w = sequence_logps(chosen_logp, self.w_chosen[part])
        pol_l = sequence_logps(response_logprobs(policy, self.rejected, part), self.w_rejected[part])
        value, accuracy = dpo_loss(pol_w, pol_l, ref_w, ref_l, usable, beta=algo.dpo_beta)
        # the mean over the step's usable pairs: this micro-batch's usable pairs are its share
        weight = int(usable.sum()) / self.n_usable
        margin = algo.dpo_beta * ((pol_w - pol_l) - (ref_w - ref_l)).detach()[usable]
        self.stats["dpo_loss"] += float(value.detach()) * weight
        self.stats["dpo_accuracy"] += float(accuracy) * weight
        self.stats["dpo_margin"] += float(margin.sum()) / self.n_usable
        total = value * weight
        if algo.dpo_sft_weight:
            anchor = sft_loss(chosen_logp, self.w_sft[part]) * share(part, self.n)
            self.stats["sft_loss"] += float(anchor.detach())
            total = total + algo.dpo_sft_weight * anchor
        return total
