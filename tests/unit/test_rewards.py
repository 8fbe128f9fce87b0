"""Reward functions and score parsing on hand values."""

import pytest

from rewards.scores import BadScore, fit_to_scale, parse_score
from rewards.speech import ToySpeechDecoder
from rewards.toy import NoisyToyJudge, toy_answer_reward
from rewards.types import ScoredResponse
from rewards.wav import wav_bytes


def r(text, answer=7):
    return ScoredResponse("what is three plus four", text, extra={"answer": answer})


def test_toy_reward_hand_values():
    assert toy_answer_reward(
        [
            r("three plus four is seven"),  # right: 5
            r("three plus four is eight"),  # a wrong result: 2 (partial credit for stating one)
            r("three plus four is"),  # no result: 1
            r(""),  # empty: 1
            r("is seven is eight"),  # the last "is" counts: wrong, 2
            r("three plus four is banana"),  # not a number: 1
            r("zero plus zero is zero", answer=0),  # 5
        ]
    ) == [5.0, 2.0, 1.0, 1.0, 2.0, 1.0, 5.0]
    assert toy_answer_reward([]) == []


def test_noisy_toy_judge():
    responses = [r(f"three plus four is {w}") for w in ("seven", "eight", "nine", "six", "five")] + [r("three plus")]
    clean = toy_answer_reward(responses)
    assert NoisyToyJudge(0.0, 0.0, seed=1)(responses) == clean  # no noise: the toy reward itself
    flipped = NoisyToyJudge(0.0, 1.0, seed=1)(responses)
    assert flipped == [2.0, 5.0, 5.0, 5.0, 5.0, 1.0]  # every verdict reversed; no stated result stays 1
    noisy = NoisyToyJudge(1.0, 0.0, seed=1)
    scores = noisy(responses)
    assert scores == noisy(list(reversed(responses)))[::-1]  # a response's score is fixed, whatever the batch
    assert all(1.0 <= s <= 5.0 for s in scores) and scores != clean
    assert NoisyToyJudge(1.0, 0.0, seed=2)(responses) != scores  # the seed changes the judge's errors


@pytest.mark.parametrize(
    "reply,score",
    [
        ("<justification>good</justification><score>4</score>", 4.0),
        ("<score>3.5</score>", 3.5),
        ("<SCORE> 2 </SCORE>", 2.0),
        ("<score>5</score> then <score>1</score>", 5.0),  # the first one
        ("<score>0</score>", 0.0),
        ("<score>12</score>", 12.0),  # parsed; the scale check is separate
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", ["", "4", "<score>four</score>", "<score>-1</score>", "<score></score>", None])
def test_parse_score_rejects(reply):
    with pytest.raises(BadScore):
        parse_score(reply)


def test_fit_to_scale():
    assert fit_to_scale(3.0, 1, 5, "default") == 3.0
    assert fit_to_scale(0.0, 1, 5, "clamp") == 1.0 and fit_to_scale(9.0, 1, 5, "clamp") == 5.0
    with pytest.raises(BadScore, match="outside"):
        fit_to_scale(9.0, 1, 5, "default")


def test_toy_speech_decoder_and_wav():
    audio = ToySpeechDecoder().decode([0, 255])
    assert audio.sample_rate == 22050 and len(audio.samples) == 2 * 1764
    assert max(abs(x) for x in audio.samples) <= 0.5
    data = wav_bytes(audio)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert len(data) == 44 + 2 * len(audio.samples)  # header + 16-bit mono PCM


def test_checked_scores_take_any_number_and_replace_the_rest():
    import numpy as np
    import torch

    from rewards.scores import checked_scores

    column = [np.float32(3.5), np.int64(2), 4, True, None, float("inf"), 0.5, "4"]
    assert checked_scores("plugin", column, 8, 1.0, 5.0, 2.5) == ([3.5, 2.0, 4.0, 2.5, 2.5, 2.5, 2.5, 2.5], 5)
    assert checked_scores("plugin", np.array([1.5, 9.0]), 2, 1.0, 5.0, 2.5) == ([1.5, 2.5], 1)
    assert checked_scores("plugin", torch.tensor([4.0, float("nan")]), 2, 1.0, 5.0, 2.5) == ([4.0, 2.5], 1)
    default = 2.5  # the judge returns the configured default object itself: a valid score, not a replaced one
    assert checked_scores("judge", [default, 3.0], 2, 1.0, 5.0, default) == ([2.5, 3.0], 0)
    for bad, got in (([1.0], "1 values"), ("55", "str"), (3.0, "float")):
        with pytest.raises(ValueError, match=f"reward function 'plugin' returned {got} for 2 responses"):
            checked_scores("plugin", bad, 2, 1.0, 5.0, 2.5)
