"""The WavAlign objective (method.md §3, §5, §7). Pure module: torch only.

Shapes: N = rollout rows (P prompts x G samples, grouped prompt by prompt), M = SFT rows,
T = response positions. `logp[n, t]` is log pi_theta(token t of row n | everything before it).

RL term — group-relative policy gradient on the chosen tokens (text only by default):

    ratio_{n,t} = exp(lp - sg(lp))                 (on-policy: 1 in value, gradient of lp)
                = clip-bounded exp(lp - lp_old)    (stale rollouts: PPO-style min with a clip)
    kl_{n,t}    = exp(lp_ref - lp) - (lp_ref - lp) - 1      (k3; zero without a reference model)
    l_{n,t}     = -(ratio * A_n - (beta_text * text + beta_speech * speech) * kl)
    L_RL(row)   = sum_t l m / max(sum_t m, 1e-6)   m: the rl_token_type mask x its weight
    L_RL        = mean over rows (= mean over G, then over prompts: every prompt has G rows)

    Fallback (§3.3): a group in which no row has any masked token uses its completion mask instead.

SFT anchor — teacher forcing on the reference, one row per prompt:

    L_SFT(row) = -sum_t w lp / max(sum_t w, 1e-6);   L_SFT = mean over the rows with sum_t w > 0
    (sft_token_type text or speech: a row without such tokens has nothing to teach and does not
    count in the mean, as in the method's reference code; with "all" every row counts)

Mix: L = λ L_RL + (1 - λ) L_SFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.masks import ModalityMasks

TOKEN_TYPES = ("text", "speech", "all")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits whose position t scores targets[:, t] -> (B, T) log-probabilities (float32)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_weights(
    masks: ModalityMasks, token_type: str, text_weight: float = 1.0, speech_weight: float = 1.0
) -> torch.Tensor:
    """(B, T) float weights of the tokens a term trains on (method §3.3 / §5.3)."""
    text, speech, completion = masks.text.float(), masks.speech.float(), masks.completion.float()
    if token_type == "text":
        return text * text_weight
    if token_type == "speech":
        return speech * speech_weight
    if token_type == "all":
        return completion + (speech_weight - 1) * speech + (text_weight - 1) * text
    raise ValueError(f"token type must be one of {TOKEN_TYPES}, got {token_type!r}")


def with_group_fallback(weights: torch.Tensor, completion: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups (consecutive runs of group_size rows) with no weighted token use their completion mask."""
    n, t = weights.shape
    grouped = weights.view(n // group_size, group_size, t)
    empty = grouped.sum(dim=(1, 2)) == 0  # (P,)
    fallback = completion.float().view(n // group_size, group_size, t)
    return torch.where(empty[:, None, None], fallback, grouped).view(n, t)


@dataclass(frozen=True)
class RLTerms:
    loss: torch.Tensor  # scalar
    kl_text: torch.Tensor  # scalar: mean k3 KL over text tokens (0 without reference)
    kl_speech: torch.Tensor
    clip_frac: torch.Tensor  # share of weighted tokens whose ratio was clipped (stale mode)


def rl_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    masks: ModalityMasks,
    *,
    old_logp: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta_text: float = 0.0,
    beta_speech: float = 0.0,
) -> RLTerms:
    """The policy-gradient term. `weights` come from token_weights (+ with_group_fallback)."""
    adv = advantages.to(logp.dtype)[:, None]
    if old_logp is None:
        ratio = torch.exp(logp - logp.detach())
        surrogate = ratio * adv
        clipped = torch.zeros_like(logp, dtype=torch.bool)
    else:  # rollouts from an older policy: importance ratio, clipped (PPO's pessimistic min)
        ratio = torch.exp(logp - old_logp)
        bounded = ratio.clamp(1 - clip_eps, 1 + clip_eps)
        surrogate = torch.minimum(ratio * adv, bounded * adv)
        clipped = (ratio * adv) > (bounded * adv)
    if ref_logp is None:
        kl = torch.zeros_like(logp)
    else:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
    text, speech = masks.text.to(logp.dtype), masks.speech.to(logp.dtype)
    per_token = -(surrogate - (beta_text * text + beta_speech * speech) * kl)
    per_row = (per_token * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-6)
    return RLTerms(
        loss=per_row.mean(),
        kl_text=_masked_mean(kl.detach(), text),
        kl_speech=_masked_mean(kl.detach(), speech),
        clip_frac=_masked_mean(clipped.to(logp.dtype), (weights > 0).to(logp.dtype)),
    )


def sft_loss(logp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood per reference row, then the mean over the rows that have
    weighted tokens (0 when none has)."""
    per_row = -(logp * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-6)
    taught = supervised_rows(weights)
    return (per_row * taught).sum() / taught.sum().clamp_min(1)


def supervised_rows(weights: torch.Tensor) -> torch.Tensor:
    """(B,) float: 1 for the rows with any weighted token."""
    return (weights.sum(dim=1) > 0).to(weights.dtype)


def mixed_loss(lam: float, rl: torch.Tensor, sft: torch.Tensor) -> torch.Tensor:
    """L = λ L_RL + (1 - λ) L_SFT (method §7); λ in [0, 1]."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"λ must lie in [0, 1], got {lam}")
    return lam * rl + (1 - lam) * sft


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)
