"""The WavAlign objective on hand-computed values, and its invariances."""

import math

import pytest
import torch

from learner.loss import mixed_loss, rl_loss, sft_loss, token_logprobs, token_weights, with_group_fallback
from learner.masks import ModalityMasks, modality_masks
from tests.conftest import HAND
from wavalign.layout import SpeechLayout

LAYOUT = SpeechLayout(**HAND, interleave_ratio=(1, 4))
B, E, EOS = 10, 11, 12


def masks_of(rows):
    return modality_masks(torch.tensor(rows), LAYOUT)


def test_token_logprobs_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_token_weights_per_type():
    m = masks_of([[1, B, 20, E, EOS]])
    assert token_weights(m, "text").tolist() == [[1, 0, 0, 0, 1]]
    assert token_weights(m, "speech").tolist() == [[0, 1, 1, 1, 0]]
    assert token_weights(m, "all", text_weight=2.0, speech_weight=0.5).tolist() == [[2, 0.5, 0.5, 0.5, 2]]


def test_on_policy_rl_value_and_gradient_by_hand():
    # Two rows of one group, A = (+1, -1). Row 0 has text tokens at 0 and 4; row 1 has none (weights 0).
    m = masks_of([[1, B, 20, E, EOS], [B, 20, 21, E, 13]])
    w = token_weights(m, "text")
    logp = torch.full((2, 5), -1.0, requires_grad=True)
    terms = rl_loss(logp, torch.tensor([1.0, -1.0]), w, m)
    # row 0: mean over its 2 text tokens of -(1 * 1) = -1; row 1: no weighted token -> 0; mean -> -0.5
    assert terms.loss.item() == pytest.approx(-0.5)
    terms.loss.backward()
    # d/d lp[0, t] = -A_0 * w / sum(w) / N = -1 * 1/2 / 2 on text positions
    assert logp.grad.tolist() == [[-0.25, 0, 0, 0, -0.25], [0, 0, 0, 0, 0]]
    assert terms.kl_text.item() == 0 and terms.kl_speech.item() == 0


def test_group_fallback_uses_completion_when_no_row_has_text():
    m = masks_of([[B, 20, E, 13], [B, 21, E, 13], [1, EOS, 13, 13], [2, EOS, 13, 13]])
    w = with_group_fallback(token_weights(m, "text"), m.completion, group_size=2)
    assert w[:2].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]  # first group: no text at all -> completion mask
    assert w[2:].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]  # second group keeps its text mask


def test_stale_rollouts_clip_the_ratio_by_hand():
    m = masks_of([[1, EOS]])
    w = token_weights(m, "text")
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.25]]))  # ratio 2 on both tokens
    terms = rl_loss(logp, torch.tensor([1.0]), w, m, old_logp=old, clip_eps=0.2)
    assert terms.loss.item() == pytest.approx(-1.2)  # ratio 2 clipped to 1.2, A = 1
    assert terms.clip_frac.item() == 1.0
    terms = rl_loss(logp, torch.tensor([-1.0]), w, m, old_logp=old, clip_eps=0.2)
    assert terms.loss.item() == pytest.approx(2.0)  # negative advantage: min(-2, -1.2) = -2, unclipped


def test_k3_kl_per_modality_by_hand():
    m = masks_of([[1, B, EOS]])  # text, speech (boundary), text
    w = token_weights(m, "all")
    logp = torch.zeros(1, 3)
    ref = torch.ones(1, 3)  # ref - lp = 1 -> k3 = e - 1 - 1
    k3 = math.e - 2
    terms = rl_loss(logp, torch.tensor([0.0]), w, m, ref_logp=ref, beta_text=0.1, beta_speech=0.01)
    assert terms.kl_text.item() == pytest.approx(k3) and terms.kl_speech.item() == pytest.approx(k3)
    assert terms.loss.item() == pytest.approx((0.1 * k3 + 0.01 * k3 + 0.1 * k3) / 3)


def test_sft_loss_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.5, 0.5]]))
    w = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    row0 = -(math.log(0.5) + math.log(0.25)) / 2
    row1 = -math.log(0.5)
    assert sft_loss(logp, w).item() == pytest.approx((row0 + row1) / 2)


def test_sft_loss_is_the_mean_over_the_rows_that_have_weighted_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5], [0.1, 0.2]]))
    w = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])  # row 1 has none of the chosen tokens
    row0, row2 = -(math.log(0.5) + math.log(0.25)) / 2, -math.log(0.2)
    assert sft_loss(logp, w).item() == pytest.approx((row0 + row2) / 2)  # not (row0 + 0 + row2) / 3
    assert sft_loss(logp, torch.zeros(3, 2)).item() == 0.0


def test_lambda_one_and_zero_reduce_to_the_single_losses():
    rl, sft = torch.tensor(0.3, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    assert torch.equal(mixed_loss(1.0, rl, sft), rl.detach()) and torch.equal(mixed_loss(0.0, rl, sft), sft.detach())
    mixed_loss(0.0, rl, sft).backward()
    assert rl.grad.item() == 0.0 and sft.grad.item() == 1.0
    rl.grad = sft.grad = None
    mixed_loss(1.0, rl, sft).backward()
    assert rl.grad.item() == 1.0 and sft.grad.item() == 0.0
    with pytest.raises(ValueError):
        mixed_loss(1.5, rl, sft)


def test_text_only_rl_gives_exactly_zero_gradient_at_speech_positions():
    torch.manual_seed(0)
    ids = torch.tensor([[1, B, 20, 21, E, 2, EOS], [3, B, 22, E, 4, 5, EOS]])
    m = masks_of(ids.tolist())
    logits = torch.randn(2, 7, 30, requires_grad=True)
    terms = rl_loss(token_logprobs(logits, ids), torch.tensor([0.7, -0.7]), token_weights(m, "text"), m)
    terms.loss.backward()
    speech_positions = m.speech
    assert torch.count_nonzero(logits.grad[speech_positions]) == 0
    assert torch.count_nonzero(logits.grad[m.text]) > 0


def test_splitting_into_micro_batches_leaves_the_gradient_unchanged():
    torch.manual_seed(1)
    ids = torch.randint(0, 30, (8, 6))
    ids[:, -1] = EOS
    m = masks_of(ids.tolist())
    w = with_group_fallback(token_weights(m, "text"), m.completion, group_size=4)
    adv = torch.randn(8)
    logits = torch.randn(8, 6, 30, requires_grad=True)
    rl_loss(token_logprobs(logits, ids), adv, w, m).loss.backward()
    full = logits.grad.clone()
    logits.grad = None
    for part in (slice(0, 4), slice(4, 8)):  # two micro-batches of one group each, weighted by their share
        sub = ModalityMasks(*(x[part] for x in (m.completion, m.text, m.speech, m.boundary)))
        (rl_loss(token_logprobs(logits[part], ids[part]), adv[part], w[part], sub).loss * 4 / 8).backward()
    assert torch.allclose(logits.grad, full, atol=1e-7)


def test_dpo_by_hand():
    from learner.dpo import dpo_loss, sequence_logps

    logp = torch.log(torch.tensor([[0.5, 0.5, 0.1], [0.25, 0.5, 0.1]]))
    w = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    s = sequence_logps(logp, w)  # sums over allowed tokens: ln .25, ln .125
    assert s.tolist() == pytest.approx([math.log(0.25), math.log(0.125)])
    # policy margin ln 2 over a reference margin 0, beta 0.2: z = 0.2 ln 2; L = -log sigmoid(z)
    loss, acc = dpo_loss(s[:1], s[1:], torch.zeros(1), torch.zeros(1), torch.tensor([True]), beta=0.2)
    z = 0.2 * math.log(2)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-z)))) and acc.item() == 1.0
    # an unusable pair (a side with no allowed token) is skipped
    loss2, _ = dpo_loss(
        torch.tensor([s[0], 9.0]),
        torch.tensor([s[1], -9.0]),
        torch.zeros(2),
        torch.zeros(2),
        torch.tensor([True, False]),
    )
    assert loss2.item() == pytest.approx(loss.item())
