"""The runnable examples in docstrings are tests too."""

import doctest
import importlib

import pytest

MODULES = [
    "rewards.toy",
    "rewards.scores",
    "rewards.judge_reply",
    "rewards.speech",
    "wavalign.toy.codec",
    "wavalign.toy.task",
    "learner.schedule",
    "learner.dpo_pairs",
    "learner.masks",
    "actors.weight_region",
    "actors.pool",
    "wavalign.storage",
    "wavalign.config",
    "actors.control",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
