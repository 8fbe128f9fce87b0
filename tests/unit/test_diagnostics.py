"""Diagnostics by hand: entropy per modality, gradient norms, the rollout-vs-learner logprob mismatch."""

import math

import pytest
import torch

from learner.diagnostics import LogprobMismatch, grad_norm, modality_entropy, token_entropy
from learner.masks import modality_masks
from tests.conftest import HAND
from wavalign.layout import SpeechLayout


def test_entropy_by_hand():
    uniform4 = torch.zeros(1, 1, 4)
    assert token_entropy(uniform4).item() == pytest.approx(math.log(4))
    certain = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]])
    assert token_entropy(certain).item() == pytest.approx(0.0, abs=1e-6)


def test_modality_entropy_averages_over_each_modality():
    layout = SpeechLayout(**HAND, interleave_ratio=(1, 4))
    masks = modality_masks(torch.tensor([[1, 10, 20, 11, 12]]), layout)  # text, BOA, speech, EOA, eos(text)
    logits = torch.zeros(1, 5, 4)
    logits[0, 1:4] = torch.tensor([100.0, 0, 0, 0])  # certain on speech positions
    e = modality_entropy(logits, masks)
    assert e["text_entropy"] == pytest.approx(math.log(4)) and e["speech_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert e["total_entropy"] == pytest.approx(2 * math.log(4) / 5)


def test_grad_norm_by_hand_and_leaves_grads_alone():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    loss = (w * torch.tensor([1.0, 1.0])).sum() * 2  # d/dw = (2, 2): norm 2 sqrt 2
    assert grad_norm(loss, [w]) == pytest.approx(2 * math.sqrt(2))
    assert w.grad is None
    loss.backward()  # the graph was kept
    assert w.grad.tolist() == [2.0, 2.0]


def k3(delta: float) -> float:
    return math.exp(delta) - 1 - delta


def test_logprob_mismatch_by_hand_over_micro_batches():
    layout = SpeechLayout(**HAND, interleave_ratio=(1, 4))
    ids = torch.tensor([[1, 10, 20, 11, 12, 13], [2, 12, 13, 13, 13, 13]])  # text BOA code EOA eos pad | text eos
    masks = modality_masks(ids, layout)
    learner = torch.tensor([[-1.0, -0.1, -2.0, -0.2, -0.5, -9.0], [-1.5, -0.3, 0.0, 0.0, 0.0, 0.0]])
    sampler = learner - torch.tensor([[0.1, 0.0, -0.4, 0.2, 0.0, 5.0], [0.3, -0.2, 7.0, 7.0, 7.0, 7.0]])
    mismatch = LogprobMismatch()
    for row in range(2):  # one micro-batch per row
        mismatch.add(learner[row : row + 1], sampler[row : row + 1], modality_masks(ids[row : row + 1], layout))
    got = mismatch.summary()
    # text: 0.1, 0.0 (eos), 0.3, 0.2 (eos); speech (BOA, code, EOA): 0.0, 0.4, 0.2; padding is no token
    assert got["mismatch_text_mean_abs"] == pytest.approx((0.1 + 0.0 + 0.3 + 0.2) / 4)
    assert got["mismatch_text_max_abs"] == pytest.approx(0.3)
    assert got["mismatch_speech_mean_abs"] == pytest.approx((0.0 + 0.4 + 0.2) / 3)
    assert got["mismatch_speech_max_abs"] == pytest.approx(0.4)
    deltas = [0.1, 0.0, -0.4, 0.2, 0.0, 0.3, -0.2]
    assert got["mismatch_kl"] == pytest.approx(sum(k3(d) for d in deltas) / 7)
    whole = LogprobMismatch()
    whole.add(learner, sampler, masks)
    assert whole.summary() == pytest.approx(got)
    text_only = LogprobMismatch()
    text_only.add(learner[1:], sampler[1:], modality_masks(ids[1:], layout))
    assert math.isnan(text_only.summary()["mismatch_speech_mean_abs"])
