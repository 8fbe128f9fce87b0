"""The learner's step (learner/step.py), the code LearnerWorker runs, on a tiny torch model: the
micro-batch losses it hands the optimizer add up, in value and in gradient, to the whole batch's
objective written out by hand from rl_loss and sft_loss, whatever the micro-batch size.

Tolerance: token log-probs are float32 (token_logprobs), and a micro-batched step sums them in
another order than the whole batch, so values and gradients agree to float32 rounding (rel 1e-5);
a micro-batch weighted by a wrong share, or a term mixed with the wrong λ, is off by 10% or more.
"""

import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from learner.loss import rl_loss, sft_loss, token_weights, with_group_fallback
from learner.masks import modality_masks
from learner.step import DpoStep, MixedStep
from tests.conftest import HAND
from wavalign.config import AlgorithmConfig
from wavalign.layout import SpeechLayout
from wavalign.messages import DpoBatch, TrainBatch

LAYOUT = SpeechLayout(**HAND, interleave_ratio=(1, 4))
B, E, EOS, PAD = 10, 11, 12, 13  # BOA, EOA, eos, pad; speech codes are 20..29, text below 10
VOCAB, G = 32, 2
RTOL = 1e-5


class TinyLM(torch.nn.Module):
    """Embedding -> running mean over the prefix -> linear head: position t sees tokens 0..t only,
    so right padding changes nothing before it (as in a causal LM)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        positions = torch.arange(1, input_ids.shape[1] + 1)[:, None]
        return SimpleNamespace(logits=self.head(torch.tanh(self.embed(input_ids).cumsum(1) / positions)))


PROMPTS = [(1, 2, 3), (4, 5)]
ROLLOUTS = [(1, B, 20, 21, E, 2, EOS), (3, EOS), (B, 22, E, EOS), (5, 6, B, 23, 24, E, EOS)]  # G per prompt
BATCH = TrainBatch(
    rollout_prompts=[p for p in PROMPTS for _ in range(G)],
    rollout_responses=ROLLOUTS,
    advantages=[1.0, -0.5, -1.5, 0.5],  # not zero-mean: the on-policy loss value is -mean(A), not 0
    sft_prompts=PROMPTS,
    sft_targets=[(1, B, 20, E, EOS), (2, 3, EOS)],
    lam=0.3,
)


def row_logprobs(model, prompts, responses) -> torch.Tensor:
    """(N, T) log p(response token k | prompt, earlier tokens), one unpadded forward per row; 0 past a
    row's end (those positions carry no weight)."""
    width = max(len(r) for r in responses)
    rows = []
    for prompt, response in zip(prompts, responses):
        logits = model(input_ids=torch.tensor([[*prompt, *response]])).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # position t-1 predicts token t
        picked = logp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        rows.append(torch.cat([picked, torch.zeros(width - len(response))]))
    return torch.stack(rows)


def padded(responses) -> torch.Tensor:
    width = max(len(r) for r in responses)
    return torch.tensor([[*r, *[PAD] * (width - len(r))] for r in responses])


def by_hand(model, batch, algo, reference=None) -> tuple[float, float, float, list[torch.Tensor]]:
    """The whole batch's objective, λ L_RL + (1 - λ) L_SFT, its two terms and its gradient."""
    model.zero_grad()
    masks = modality_masks(padded(batch.rollout_responses), LAYOUT)
    weights = with_group_fallback(token_weights(masks, algo.rl_token_type), masks.completion, G)
    logp = row_logprobs(model, batch.rollout_prompts, batch.rollout_responses)
    old = None
    if batch.staleness:
        width = logp.shape[1]
        old = torch.tensor([[*lps, *[0.0] * (width - len(lps))] for lps in batch.rollout_logprobs])
    ref = None if reference is None else row_logprobs(reference, batch.rollout_prompts, batch.rollout_responses)
    rl = rl_loss(
        logp,
        torch.tensor(batch.advantages),
        weights,
        masks,
        old_logp=old,
        clip_eps=algo.ratio_clip,
        ref_logp=ref,
        beta_text=algo.kl_beta_text,
        beta_speech=algo.kl_beta_speech,
    ).loss
    sft_masks = modality_masks(padded(batch.sft_targets), LAYOUT)
    sft = sft_loss(row_logprobs(model, batch.sft_prompts, batch.sft_targets), token_weights(sft_masks, "all"))
    total = batch.lam * rl + (1 - batch.lam) * sft
    total.backward()
    return total.item(), rl.item(), sft.item(), [p.grad.clone() for p in model.parameters()]


def run_step(step, model, rows_per_micro) -> tuple[float, list[torch.Tensor]]:
    """What DeepSpeedEngine.step does with the micro-batch losses, less the optimizer: one backward each."""
    model.zero_grad()
    total = 0.0
    for loss_of in step.micro_losses(model, rows_per_micro):
        loss = loss_of()
        loss.backward()
        total += loss.item()
    return total, [p.grad.clone() for p in model.parameters()]


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=RTOL * e.abs().max().item())


@pytest.mark.parametrize("case", ["on_policy", "stale_with_reference"])
@pytest.mark.parametrize("rows_per_micro", [1, 3, 64])
def test_micro_batched_step_equals_the_whole_batch_objective_by_hand(case, rows_per_micro):
    model, batch, algo, reference = TinyLM(), BATCH, AlgorithmConfig(), None
    if case == "stale_with_reference":
        # sampled by a policy 0.3 nats less likely on every token: ratio e^0.3 = 1.35, clipped to 1.2
        # where the advantage is positive; the k3 KL to another model on both modalities
        with torch.no_grad():
            current = row_logprobs(model, batch.rollout_prompts, batch.rollout_responses)
        sampler = [tuple((current[i, : len(r)] - 0.3).tolist()) for i, r in enumerate(batch.rollout_responses)]
        batch = dataclasses.replace(batch, staleness=1, rollout_logprobs=sampler)
        algo = AlgorithmConfig(kl_beta_text=0.05, kl_beta_speech=0.02)
        reference = TinyLM(seed=1).requires_grad_(False)
    value, rl, sft, grads = by_hand(model, batch, algo, reference)

    step = MixedStep(batch, LAYOUT, algo, G, reference=reference)
    total, micro_grads = run_step(step, model, rows_per_micro)

    assert total == pytest.approx(value, rel=RTOL)
    assert step.stats["rl_loss"] == pytest.approx(rl, rel=RTOL) and step.stats["sft_loss"] == pytest.approx(
        sft, rel=RTOL
    )
    assert_close(micro_grads, grads)
    if case == "stale_with_reference":
        assert 0 < step.stats["clip_frac"] < 1 and step.stats["kl_text"] > 0 and step.stats["kl_speech"] > 0


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lambda_zero_and_one_train_one_term_alone(lam):
    model = TinyLM()
    batch = dataclasses.replace(BATCH, lam=lam)
    step = MixedStep(batch, LAYOUT, AlgorithmConfig(), G)
    total, _ = run_step(step, model, 2)
    assert total == pytest.approx(step.stats["rl_loss"] if lam == 1.0 else step.stats["sft_loss"], rel=RTOL)


def test_gradient_norm_diagnostic_is_the_text_and_speech_rl_gradient_of_the_first_micro_batch():
    model, algo = TinyLM(), AlgorithmConfig()
    norms = MixedStep(BATCH, LAYOUT, algo, G).modality_grad_norms(model, rows_per_micro=2)
    first = slice(0, 2)
    responses = BATCH.rollout_responses[first]
    masks = modality_masks(padded(responses), LAYOUT)
    for kind in ("text", "speech"):
        logp = row_logprobs(model, BATCH.rollout_prompts[first], responses)
        loss = rl_loss(logp, torch.tensor(BATCH.advantages[first]), getattr(masks, kind).float(), masks).loss
        grads = torch.autograd.grad(loss, list(model.parameters()))
        expected = math.sqrt(sum(float((g**2).sum()) for g in grads))
        assert norms[f"grad_norm_{kind}"] == pytest.approx(expected, rel=RTOL)


def test_dpo_step_against_an_identical_reference_is_ln2_whatever_the_micro_batching():
    # the third pair's rejected side has no text token: skipped (usable pairs: 2)
    batch = DpoBatch(
        prompts=[(1, 2), (3,), (4, 5)],
        chosen=[(1, 2, EOS), (B, 20, E, 3, EOS), (6, EOS)],
        rejected=[(3, EOS), (4, 5, 6, EOS), (B, 21, E)],
    )
    algo = AlgorithmConfig(objective="dpo", dpo_sft_weight=0.5)
    results = []
    for rows_per_micro in (1, 3):
        model = TinyLM()
        step = DpoStep(batch, LAYOUT, algo, reference=copy.deepcopy(model).requires_grad_(False))
        results.append((*run_step(step, model, rows_per_micro), step.stats))
    (total_1, grads_1, stats_1), (total_3, grads_3, stats_3) = results
    # z = 0 on every pair: -log sigmoid(0) = ln 2; the SFT anchor is added with weight 0.5
    assert stats_1["dpo_loss"] == pytest.approx(math.log(2), rel=RTOL) and stats_1["dpo_pairs"] == 2
    assert stats_1["dpo_margin"] == pytest.approx(0, abs=1e-7) and stats_1["sft_loss"] > 0
    assert total_1 == pytest.approx(math.log(2) + 0.5 * stats_1["sft_loss"], rel=RTOL)
    assert total_3 == pytest.approx(total_1, rel=RTOL) and stats_3["sft_loss"] == pytest.approx(stats_1["sft_loss"])
    assert_close(grads_1, grads_3)
