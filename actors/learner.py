"""LearnerWorker: applies the WavAlign update to the policy with DeepSpeed.

One `train_step` = one optimizer step over the step's rollout rows (policy gradient on the chosen
modality, text by default) and SFT rows (teacher forcing on the references, all tokens by default),
mixed by the step's λ, in micro-batches whose gradients accumulate to the whole batch's.
`dpo_step` is the DPO variant (method §8). A plain class; the driver makes it a Ray worker at the
call site.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from actors.weight_sync import LearnerSync, SyncReport, Worker
from learner.deepspeed_engine import DeepSpeedEngine, frozen_policy
from learner.diagnostics import grad_norm, modality_entropy
from learner.dpo import dpo_loss, sequence_logps
from learner.loss import rl_loss, sft_loss, token_logprobs, token_weights, with_group_fallback
from learner.masks import ModalityMasks, modality_masks
from wavalign.config import PipelineConfig
from wavalign.model_files import load_tokenizer_and_layout


@dataclass(frozen=True)
class TrainBatch:
    """One step's data. Rollout rows come grouped: G consecutive rows per prompt."""

    rollout_prompts: Sequence[Sequence[int]]  # (N,) prompt ids of each rollout row
    rollout_responses: Sequence[Sequence[int]]  # (N,) response ids
    advantages: Sequence[float]  # (N,)
    sft_prompts: Sequence[Sequence[int]]  # (P,) prompt ids
    sft_targets: Sequence[Sequence[int]]  # (P,) reference answer ids (interleaved, ending with eos)
    lam: float  # the step's mixing weight (from the λ controller, global over the step's groups)
    staleness: int = 0  # policy versions between the rollouts' sampler and the weights trained now
    rollout_logprobs: Sequence[Sequence[float]] | None = None  # (N,) the sampler's per-token logprobs


@dataclass(frozen=True)
class DpoBatch:
    prompts: Sequence[Sequence[int]]  # (B,)
    chosen: Sequence[Sequence[int]]  # (B,) preferred responses (e.g. the reference)
    rejected: Sequence[Sequence[int]]  # (B,) dispreferred responses (offline pairs or fresh samples)


@dataclass(frozen=True)
class _Rows:
    """Prompt + response rows, right-padded; `starts` locate each response inside input_ids."""

    input_ids: torch.Tensor  # (B, L)
    attention: torch.Tensor  # (B, L)
    responses: torch.Tensor  # (B, T) response ids, pad-filled
    starts: torch.Tensor  # (B,) index of each response's first token in input_ids


class LearnerWorker:
    def __init__(
        self, model_path: str, cfg: PipelineConfig, rank: int = 0, world_size: int = 1, master_port: int = 29500
    ) -> None:
        _, self.layout = load_tokenizer_and_layout(model_path, cfg.model.layout)
        self.cfg, self.model_path = cfg, model_path
        if cfg.learner.torch_threads:
            torch.set_num_threads(cfg.learner.torch_threads)
        self.engine = DeepSpeedEngine(
            model_path, cfg.learner, cfg.run.steps, rank=rank, world_size=world_size, master_port=master_port
        )
        self.device = self.engine.device  # batches are built on CPU and moved there (a GPU learner)
        self.reference = frozen_policy(model_path, cfg.learner, self.device) if cfg.algorithm.needs_reference else None
        self.steps_done = 0
        rc = cfg.rollout
        self.weight_sync = LearnerSync(
            rc.weight_transfer_backend,
            rank,
            self.engine.full_weights,
            chunk_bytes=int(rc.weight_bucket_mb * 2**20),
            timeout_s=rc.update_timeout_s,
            # ipc, unpacked: handles to the parameters themselves, no copy. Under ZeRO-3 the gathered
            # copies would all stay alive until the workers finish, so they go in packed buffers.
            packed=cfg.learner.zero_stage == 3,
        )

    def ready(self) -> dict[str, int]:
        return {"pid": os.getpid(), "steps_done": self.steps_done}

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
        starts = torch.tensor([len(p) for p in prompts])
        return _Rows(*(x.to(self.device) for x in (ids, attention, response_ids, starts)))

    def _response_logits(self, rows: _Rows, part: slice, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(b, T, V) logits scoring each response token of rows[part] (the policy's by default)."""
        model = model if model is not None else self.engine.engine
        logits = model(input_ids=rows.input_ids[part], attention_mask=rows.attention[part]).logits
        t = rows.responses.shape[1]
        # position start-1+k predicts response token k; clamp the tail (padding, masked out later)
        index = (rows.starts[part, None] - 1 + torch.arange(t, device=logits.device)).clamp(max=logits.shape[1] - 1)
        return logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1]))

    def _reference_logprobs(self, rows: _Rows, part: slice) -> torch.Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            return token_logprobs(self._response_logits(rows, part, self.reference), rows.responses[part])

    def _old_logprobs(self, batch: TrainBatch, width: int) -> torch.Tensor | None:
        """The sampler's logprobs, (N, T), when stale rollouts get the clipped importance ratio."""
        if batch.staleness == 0 or self.cfg.algorithm.stale_correction == "none":
            return None  # on-policy: the ratio is 1 in value
        if batch.rollout_logprobs is None:
            raise ValueError(f"rollouts {batch.staleness} versions old need rollout_logprobs for the importance ratio")
        old = torch.zeros(len(batch.rollout_logprobs), width)
        for i, (lps, ids) in enumerate(zip(batch.rollout_logprobs, batch.rollout_responses)):
            if len(lps) != len(ids):
                raise ValueError(f"rollout row {i}: {len(lps)} logprobs for {len(ids)} response tokens")
            old[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        return old.to(self.device)

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
        advantages = torch.tensor(batch.advantages, dtype=torch.float32, device=self.device)
        old_logp = self._old_logprobs(batch, rl_rows.responses.shape[1])
        n, m, lam = len(batch.rollout_prompts), len(batch.sft_prompts), batch.lam
        stats: dict[str, float] = {"rl_loss": 0.0, "sft_loss": 0.0, "kl_text": 0.0, "kl_speech": 0.0, "clip_frac": 0.0}

        def rl_terms(logits: torch.Tensor, part: slice, weights: torch.Tensor):
            return rl_loss(
                token_logprobs(logits, rl_rows.responses[part]),
                advantages[part],
                weights,
                _slice(rl_masks, part),
                old_logp=old_logp[part] if old_logp is not None else None,
                clip_eps=algo.ratio_clip,
                ref_logp=self._reference_logprobs(rl_rows, part),
                beta_text=algo.kl_beta_text,
                beta_speech=algo.kl_beta_speech,
            )

        def rl_part(part: slice):
            def loss() -> torch.Tensor:
                logits = self._response_logits(rl_rows, part)
                terms = rl_terms(logits, part, rl_w[part])
                share = (part.stop - part.start) / n
                for key, value in (
                    ("rl_loss", terms.loss),
                    ("kl_text", terms.kl_text),
                    ("kl_speech", terms.kl_speech),
                    ("clip_frac", terms.clip_frac),
                ):
                    stats[key] += float(value.detach()) * share
                for key, value in modality_entropy(logits, _slice(rl_masks, part)).items():
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
        every = self.cfg.learner.grad_norm_every
        if every and self.steps_done % every == 0:
            stats.update(self._modality_grad_norms(rl_rows, rl_terms, slice(0, min(micro, n))))
        result = self.engine.step(parts)
        self.steps_done += 1
        return {**stats, **result, "lambda": lam}

    def _modality_grad_norms(self, rows: _Rows, rl_terms, part: slice) -> dict[str, float]:
        """The paper's gradient-imbalance diagnostic: the norm of the gradient the RL term would have
        on the text tokens alone and on the speech tokens alone (same advantages), sampled on the
        step's first micro-batch. It runs its own forward on the bare module, outside DeepSpeed (whose
        post-backward hooks would treat it as a training backward). ZeRO-3 partitions the module's
        parameters, so there it is not computed (NaN)."""
        if self.cfg.learner.zero_stage == 3:
            return {"grad_norm_text": float("nan"), "grad_norm_speech": float("nan")}
        module = self.engine.module
        logits = self._response_logits(rows, part, module)
        masks = modality_masks(rows.responses[part], self.layout)
        params = [p for p in module.parameters() if p.requires_grad]
        return {
            f"grad_norm_{kind}": grad_norm(rl_terms(logits, part, getattr(masks, kind).float()).loss, params)
            for kind in ("text", "speech")
        }

    def dpo_step(self, batch: DpoBatch) -> dict[str, float]:
        """One DPO optimizer step (method §8): sums of log-probs over the allowed tokens (text by
        default), against the frozen reference; pairs with no allowed token on a side are skipped.
        The loss is the mean over all usable pairs of the step, whatever the micro-batching; with
        algorithm.dpo_sft_weight > 0 an SFT anchor on the chosen side is added (§15.9)."""
        if self.reference is None:
            raise ValueError("dpo_step needs the frozen reference: set algorithm.objective: dpo")
        algo, micro = self.cfg.algorithm, self.cfg.learner.micro_batch_rows
        chosen, rejected = self._rows(batch.prompts, batch.chosen), self._rows(batch.prompts, batch.rejected)
        chosen_masks = modality_masks(chosen.responses, self.layout)
        w_chosen = token_weights(chosen_masks, algo.dpo_token_type)
        w_rejected = token_weights(modality_masks(rejected.responses, self.layout), algo.dpo_token_type)
        w_sft = token_weights(chosen_masks, algo.sft_token_type)
        usable = (w_chosen.sum(dim=1) > 0) & (w_rejected.sum(dim=1) > 0)
        n, n_usable = len(batch.prompts), max(int(usable.sum()), 1)
        stats = {
            "dpo_loss": 0.0,
            "dpo_accuracy": 0.0,
            "dpo_margin": 0.0,
            "dpo_pairs": float(usable.sum()),
            "sft_loss": 0.0,
        }

        def part_loss(part: slice):
            def loss() -> torch.Tensor:
                def logps(rows: _Rows, model=None) -> torch.Tensor:
                    return token_logprobs(self._response_logits(rows, part, model), rows.responses[part])

                with torch.no_grad():
                    ref_w = sequence_logps(logps(chosen, self.reference), w_chosen[part])
                    ref_l = sequence_logps(logps(rejected, self.reference), w_rejected[part])
                chosen_logp = logps(chosen)
                pol_w, pol_l = (
                    sequence_logps(chosen_logp, w_chosen[part]),
                    sequence_logps(logps(rejected), w_rejected[part]),
                )
                value, accuracy = dpo_loss(pol_w, pol_l, ref_w, ref_l, usable[part], beta=algo.dpo_beta)
                share = int(usable[part].sum()) / n_usable
                margin = algo.dpo_beta * ((pol_w - pol_l) - (ref_w - ref_l)).detach()[usable[part]]
                stats["dpo_loss"] += float(value.detach()) * share
                stats["dpo_accuracy"] += float(accuracy) * share
                stats["dpo_margin"] += float(margin.sum()) / n_usable
                total = value * share
                if algo.dpo_sft_weight:
                    anchor = sft_loss(chosen_logp, w_sft[part]) * (part.stop - part.start) / n
                    stats["sft_loss"] += float(anchor.detach())
                    total = total + algo.dpo_sft_weight * anchor
                return total

            return loss

        parts = [part_loss(slice(i, min(i + micro, n))) for i in range(0, n, micro)]
        result = self.engine.step(parts)
        self.steps_done += 1
        return {**stats, **result}

    def full_weights(self):
        return list(self.engine.full_weights())

    # The weight sync (actors/weight_sync.py): this rank's side of vLLM's trainer engine.

    def send_weights(self, version: int, workers: Sequence[Worker]) -> SyncReport:
        """The policy's weights into `workers` as `version`; every rank calls it (ZeRO-3 gathers
        collectively), rank 0 sends and reports."""
        report = self.weight_sync.sync(version, workers)
        if self.cfg.rollout.colocate:
            torch.cuda.empty_cache()  # hand back the learner's cached blocks before vLLM's KV cache wakes
        return report

    def bring_up_worker(self, worker: Worker) -> dict:
        """The last version sent, into one worker that came up since (rank 0; runs beside a step)."""
        return self.weight_sync.bring_up(worker)

    def close_weight_sync(self) -> None:
        self.weight_sync.close()

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """log p(continuation[t] | prompt, continuation[:t]) under the learner's weights (one rank,
        no DeepSpeed step): what the rollout workers must reproduce after a sync."""
        module = self.engine.module
        ids = torch.tensor([[*prompt, *continuation]], device=next(module.parameters()).device)
        with torch.no_grad():
            logits = module(input_ids=ids).logits[0].float()  # (L, V)
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # position t-1 predicts token t
        return logp.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1).tolist()

    def save_hf(self, directory: str) -> None:
        self.engine.save_hf(directory, self.model_path)

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """DeepSpeed state (weights, optimizer, schedule) of this rank; every rank calls it."""
        self.engine.save_checkpoint(directory, tag, {"steps_done": self.steps_done})

    def load_checkpoint(self, directory: str, tag: str) -> None:
        self.steps_done = int(self.engine.load_checkpoint(directory, tag).get("steps_done", 0))


def _slice(masks: ModalityMasks, part: slice) -> ModalityMasks:
    return ModalityMasks(*(x[part] for x in (masks.completion, masks.text, masks.speech, masks.boundary)))
