"""Streaming a step's groups one at a time gives exactly the λ of the whole-batch computation."""

import pytest
import torch

from learner.mixing import LambdaController, LambdaSettings
from learner.step_stats import StepStats


def test_streamed_groups_give_the_batch_lambda():
    settings = LambdaSettings()
    rewards = {"a": [1.0, 5.0, 1.0, 5.0], "b": [3.0, 3.0, 3.0, 3.0], "c": [2.0, 4.0, 5.0, 1.0]}
    batch, streamed = LambdaController(settings), LambdaController(settings)
    order = ["a", "b", "c"]
    for _step in range(2):  # the second step exercises the EMA against the first
        expected = batch.step(torch.tensor([rewards[p] for p in order]))
        stats = StepStats(settings, group_size=4)
        for prompt_id in ["c", "a", "b"]:  # arrival order differs from prompt order
            stats.add_group(prompt_id, rewards[prompt_id])
        got, aggregates = stats.finish(streamed, order), stats.reward_aggregates(order)
        assert got == expected
    assert expected.zero_var_group_frac == pytest.approx(1 / 3)
    flat = torch.tensor([r for p in order for r in rewards[p]])
    assert aggregates["reward_mean"] == pytest.approx(float(flat.mean()))
    assert aggregates["reward_std"] == pytest.approx(float(flat.std(unbiased=False)))


def test_a_group_twice_or_missing_is_an_error():
    stats = StepStats(LambdaSettings(), group_size=2)
    stats.add_group("a", [1.0, 2.0])
    with pytest.raises(ValueError, match="twice"):
        stats.add_group("a", [1.0, 2.0])
    with pytest.raises(ValueError, match="expected 2"):
        stats.add_group("b", [1.0])
    with pytest.raises(ValueError, match="without rewards"):
        stats.finish(LambdaController(LambdaSettings()), ["a", "b"])
