"""Advantages and λ against the method's worked table (method.md §6.3), by hand."""

import math

import pytest
import torch

from learner.advantages import group_advantages
from learner.mixing import LambdaController, LambdaSettings, group_gates

TABLE = torch.tensor([[1, 5, 1, 5], [2, 5, 4, 4], [3, 4, 3, 4], [4, 4, 4, 4], [2.5, 2.5, 3, 2]], dtype=torch.float64)


def test_worked_table_gates():
    g = group_gates(TABLE, LambdaSettings())
    assert g.reward_var.tolist() == pytest.approx([4.0, 1.1875, 0.25, 0.0, 0.125])
    assert g.info.tolist() == pytest.approx([1.0, 0.296875, 0.0625, 0.0, 0.03125])
    assert g.gate.tolist() == pytest.approx([0.99995, 0.99995, 0.99331, 0.99331, 0.5], abs=1e-5)
    assert g.raw.tolist() == pytest.approx([0.79996, 0.23749, 0.04967, 0.0, 0.0125], abs=1e-5)


def test_worked_table_advantages():
    a = group_advantages(TABLE)
    assert a[0].tolist() == pytest.approx([-1, 1, -1, 1], abs=1e-4)  # (r - 3) / (2 + 1e-4)
    sd = math.sqrt(1.1875) + 1e-4
    assert a[1].tolist() == pytest.approx([-1.75 / sd, 1.25 / sd, 0.25 / sd, 0.25 / sd])  # -1.606, 1.147, 0.229, 0.229
    assert a[1, 0].item() == pytest.approx(-1.606, abs=1e-3)
    assert a[3].tolist() == [0, 0, 0, 0]  # a constant group
    assert a[4].tolist() == pytest.approx([0, 0, 1.414, -1.414], abs=1e-3)


def test_unbiased_std_variant():
    a = group_advantages(torch.tensor([[1.0, 5.0, 1.0, 5.0]]), unbiased_std=True)
    sd = math.sqrt(16 / 3) + 1e-4  # sample std of (1, 5, 1, 5)
    assert a[0].tolist() == pytest.approx([-2 / sd, 2 / sd, -2 / sd, 2 / sd])


def test_first_step_is_unsmoothed_then_ema_against_previous_state():
    ctl = LambdaController(LambdaSettings())
    first = ctl.step(TABLE)
    assert first.lam == pytest.approx((0.79996 + 0.23749 + 0.04967 + 0 + 0.0125) / 5, abs=1e-5)
    assert first.zero_var_group_frac == pytest.approx(0.2)
    # The method's EMA example: previous state 0.10, this step's raw 0.80 -> 0.1 * 0.8 + 0.9 * 0.1 = 0.17
    ctl.state = 0.10
    full = torch.tensor([[1.0, 5.0, 1.0, 5.0]] * 3)  # raw = 0.8 * sigmoid(10) ~ 0.79996 each
    assert ctl.step(full).lam == pytest.approx(0.1 * 0.79996 + 0.9 * 0.10, abs=1e-6)


def test_lambda_never_exceeds_lambda_max_and_state_round_trips():
    ctl = LambdaController(LambdaSettings())
    for _ in range(50):
        step = ctl.step(torch.tensor([[1.0, 5.0, 1.0, 5.0]]))
        assert 0 <= step.lam <= 0.8
    saved = ctl.state_dict()
    other = LambdaController(LambdaSettings())
    other.load_state_dict(saved)
    assert other.step(TABLE).lam == ctl.step(TABLE).lam


def test_fixed_mode_and_scale_derived_constants():
    fixed = LambdaController(LambdaSettings(adaptive=False, fixed_weight=0.5))
    assert fixed.step(TABLE).lam == 0.5 and fixed.state is None
    s = LambdaSettings(scale_min=0.0, scale_max=10.0)
    assert (s.var_max, s.threshold) == (25.0, 5.0)
    assert (LambdaSettings().var_max, LambdaSettings().threshold) == (4.0, 3.0)  # the paper's on 1-5


def test_a_non_finite_reward_gets_no_advantage_and_leaves_its_group_finite():
    rewards = torch.tensor([[1, 5, float("nan"), 5], [2, 4, 2, 4]], dtype=torch.float64)
    a = group_advantages(rewards)
    # group 0 from its finite three: mean 11/3, population std sqrt(32/9)
    sd = math.sqrt(32 / 9) + 1e-4
    assert a[0].tolist() == pytest.approx([(1 - 11 / 3) / sd, (5 - 11 / 3) / sd, 0.0, (5 - 11 / 3) / sd])
    assert a[1].tolist() == group_advantages(rewards[1:]).tolist()[0]  # the other group is untouched
    unbiased = group_advantages(torch.tensor([[1.0, 3.0, float("inf")]]), unbiased_std=True)
    assert unbiased[0].tolist() == pytest.approx([-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4), 0.0])
    assert group_advantages(torch.full((1, 4), float("nan"))).tolist() == [[0.0] * 4]


def test_lambda_leaves_out_groups_with_non_finite_rewards_and_never_becomes_non_finite():
    controller = LambdaController(LambdaSettings())
    clean = LambdaController(LambdaSettings()).step(TABLE[:2])
    poisoned = torch.cat([TABLE[:2], torch.tensor([[1, 5, float("nan"), 5]], dtype=torch.float64)])
    first = controller.step(poisoned)
    assert first.lam == pytest.approx(clean.lam) == pytest.approx((0.79996 + 0.23749) / 2, abs=1e-5)
    assert first.reward_var_mean == pytest.approx((4.0 + 1.1875) / 2)
    second = controller.step(torch.full((2, 4), float("nan"), dtype=torch.float64))  # no finite group: λ stays
    assert second.lam == first.lam and controller.state == first.lam and math.isfinite(second.lambda_raw)
    assert LambdaController(LambdaSettings()).step(torch.full((1, 4), float("inf"))).lam == 0.0
