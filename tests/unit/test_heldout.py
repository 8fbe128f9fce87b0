"""The run's held-out summary by hand: standard errors over prompts and the paired gain."""

import math

import pytest

from driver.heldout import HeldOut, paired_gain, standard_error, summary_line


def held(step, per_prompt, wer=0.01):
    mean = sum(per_prompt.values()) / len(per_prompt)
    return HeldOut(step, mean, wer, per_prompt, samples_per_prompt=4)


def test_standard_error_by_hand():
    # mean 0.5, deviations ±0.5 and 0: s^2 = (0.25 + 0 + 0.25) / 2 = 0.25, se = 0.5 / sqrt(3)
    assert standard_error([0.0, 0.5, 1.0]) == pytest.approx(0.5 / math.sqrt(3))
    assert math.isnan(standard_error([0.5]))


def test_paired_gain_cancels_the_spread_between_questions():
    start = held(0, {"a": 0.0, "b": 0.5, "c": 1.0})
    end = held(40, {"a": 0.25, "b": 0.75, "c": 1.0})  # +0.25, +0.25, 0: mean 1/6
    gain, se = paired_gain(start, end)
    assert gain == pytest.approx(1 / 6)
    deviations = [0.25 - 1 / 6, 0.25 - 1 / 6, -1 / 6]
    assert se == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 2 / 3))
    assert se < end.semantic_accuracy_se  # the questions' own spread is gone


def test_summary_line_says_start_end_gain_and_wer():
    start, end = held(0, {"a": 0.0, "b": 0.5, "c": 1.0}, 0.02), held(40, {"a": 0.25, "b": 0.75, "c": 1.0}, 0.03)
    line = summary_line(start, end)
    assert line.startswith("held-out (3 prompts x 4 samples): semantic accuracy 0.500 ± 0.289 at the start -> ")
    assert "0.667 ± 0.220 after step 40 (paired gain +0.167 ± 0.083); acoustic WER 0.020 -> 0.030" in line
    assert summary_line(None, end).endswith("semantic accuracy 0.667 ± 0.220 after step 40; acoustic WER 0.030")
    assert HeldOut.from_json(end.to_json()) == end


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"step": 0}',
        '{"step": 0, "semantic_accuracy": 0.5, "acoustic_wer": 0.1, "per_prompt": [1], "samples_per_prompt": 4}',
    ],
)
def test_a_file_that_is_not_held_out_figures_is_one_value_error(text):
    with pytest.raises(ValueError, match="^not the held-out figures of a run \\(") as err:
        HeldOut.from_json(text)
    assert "\n" not in str(err.value)
