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
from learner.step import DpoStep, MixedStep, sft_rank_weights
from tests.conftest import HAND
from wavalign.config import AlgorithmConfig
from wavalign.layout import SpeechLayout
from wavalign.messages import DpoBatch, TrainBatch

LAYOUT = SpeechLayout(**HAND, interleave_ratio=(1, 4))
B, E, EOS, PAD = 10, 11, 12, 13  # BOA, EOA, eos, pad; speech codes are 20..29, text below 10
NL, VOCAB, G = 9, 32, 2
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
    sft_targets=[(1, B, 20, E, EOS), (2, 3, EOS, NL)],  # NL: the turn's closing after eos (ChatML's "\n")
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
    every_token = [[1.0] * len(t) + [0.0] * (max(map(len, batch.sft_targets)) - len(t)) for t in batch.sft_targets]
    sft = sft_loss(row_logprobs(model, batch.sft_prompts, batch.sft_targets), torch.tensor(every_token))
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
        # the sampler scored every token 0.3 nats lower than the learner does
        for key in ("mismatch_text_mean_abs", "mismatch_text_max_abs", "mismatch_speech_max_abs"):
            assert step.stats[key] == pytest.approx(0.3, rel=RTOL)
        assert step.stats["mismatch_kl"] == pytest.approx(math.exp(0.3) - 1.3, rel=RTOL)
    else:
        assert "mismatch_kl" not in step.stats  # no sampler logprobs in the batch: nothing to compare


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


def test_the_turns_closing_after_eos_is_a_label_of_references_and_dpo_sides_but_not_of_rollouts():
    """Method §5.2: a reference row's labels are its content, `<|im_end|>` and the "\\n" after it;
    a sampled response ends at its first eos (§1.3)."""
    batch = dataclasses.replace(BATCH, rollout_responses=[(3, EOS, NL), (3, EOS), (4, EOS), (5, EOS)])
    step = MixedStep(batch, LAYOUT, AlgorithmConfig(), G)
    assert step.sft_weights.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert step.rl_weights[0].tolist() == [1, 1, 0]
    dpo = DpoBatch(prompts=[(1,)], chosen=[(2, EOS, NL)], rejected=[(3, 4, EOS, NL)])
    algo = AlgorithmConfig(objective="dpo", dpo_sft_weight=0.5)
    dpo_step = DpoStep(dpo, LAYOUT, algo, reference=TinyLM())
    assert dpo_step.w_chosen.tolist() == [[1, 1, 1]] and dpo_step.w_rejected.tolist() == [[1, 1, 1, 1]]
    assert dpo_step.w_sft.tolist() == [[1, 1, 1]]


SPEECH_SFT = [(1, B, 20, 21, E, EOS), (2, 3, EOS), (B, 22, E, EOS), (4, EOS), (5, B, 23, E, EOS, NL)]


def test_subset_sft_averages_over_the_rows_that_have_the_subset_on_one_rank_or_two():
    """sft_token_type speech, 2 of 5 references without speech: the loss is the mean over the 3 that
    have some (the method's reference code), not a mean over 5 that counts the others as 0; split
    over two data-parallel ranks (3 and 2 rows, 2 and 1 with speech) the ranks' average, as
    DeepSpeed averages their gradients, is the same."""
    algo = AlgorithmConfig(sft_token_type="speech")
    prompts = [(1, 2), (3,), (4, 5), (6,), (7, 8)]
    model = TinyLM()
    logp = row_logprobs(model, prompts, SPEECH_SFT).detach()
    speech = [[20 <= t < 30 or t in (B, E) for t in target] for target in SPEECH_SFT]
    per_row = [
        -sum(float(logp[i, k]) for k, s in enumerate(row) if s) / max(sum(row), 1) for i, row in enumerate(speech)
    ]
    expected = (per_row[0] + per_row[2] + per_row[4]) / 3
    assert expected == pytest.approx(sum(per_row) * 5 / 3 / 5)  # rows 1 and 3 are 0: a mean over 5 is 3/5 of it

    def batch(rows, weight=1.0):
        return TrainBatch(
            rollout_prompts=[(1,)] * G,
            rollout_responses=[(3, EOS)] * G,
            advantages=[0.0] * G,
            sft_prompts=[prompts[i] for i in rows],
            sft_targets=[SPEECH_SFT[i] for i in rows],
            lam=0.0,
            sft_rank_weight=weight,
        )

    one = MixedStep(batch(range(5)), LAYOUT, algo, G)
    total, grads = run_step(one, model, rows_per_micro=2)
    assert total == pytest.approx(expected, rel=RTOL) and one.stats["sft_loss"] == pytest.approx(expected, rel=RTOL)

    weights = sft_rank_weights([SPEECH_SFT[:3], SPEECH_SFT[3:]], LAYOUT, "speech")
    assert weights == pytest.approx([2 * 2 / 3, 2 * 1 / 3])
    ranks = [MixedStep(batch(rows, w), LAYOUT, algo, G) for rows, w in zip((range(3), range(3, 5)), weights)]
    results = [run_step(rank, model, rows_per_micro=1) for rank in ranks]
    assert sum(total for total, _ in results) / 2 == pytest.approx(expected, rel=RTOL)
    assert sum(rank.stats["sft_loss"] for rank in ranks) / 2 == pytest.approx(expected, rel=RTOL)
    assert_close([(a + b) / 2 for a, b in zip(results[0][1], results[1][1])], grads)
    assert sft_rank_weights([[(2, EOS)], [(3, EOS)]], LAYOUT, "speech") == [1.0, 1.0]  # no speech anywhere: 0 loss
