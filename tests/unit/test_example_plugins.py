"""The worked example plug-ins (examples/plugins/wavalign_example_plugins), loaded by import path as
the reward workers load them, against hand-computed scores."""

from pathlib import Path

import pytest

from rewards.types import Audio, ScoredResponse
from wavalign.plugins import decoder_factory, importable, reward_factory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


@pytest.fixture(scope="module", autouse=True)
def shipped():
    with importable([EXAMPLES]):  # as run.runtime_env.py_modules=[examples/plugins/wavalign_example_plugins]
        yield


def answer(text, reference=None, seconds=None):
    audio = Audio([0.0] * round(seconds * 100), 100) if seconds is not None else None
    return ScoredResponse(question="what is three plus four", text=text, audio=audio, reference=reference)


def test_concise_takes_off_a_point_per_word_beyond_the_reference_and_its_slack():
    concise = reward_factory("wavalign_example_plugins.rewards:concise", {"slack_words": 1}, "k")()
    reference = "three plus four is seven"  # 5 words
    responses = [
        answer("three plus four is seven", reference),  # 5 words: 5
        answer("three plus four is seven , I think", reference),  # 8 words: 2 beyond the slack: 3
        answer(" ".join(["seven"] * 12), reference),  # 6 beyond: floored at 1
        answer("seven"),  # no reference: 5
    ]
    assert concise(responses) == [5.0, 3.0, 1.0, 5.0]


def test_speech_pace_is_high_at_the_target_pace_and_falls_linearly_to_the_tolerance():
    pace = reward_factory("wavalign_example_plugins.rewards:SpeechPace", {"seconds_per_word": 0.5}, "k")()
    responses = [
        answer("three four", seconds=1.0),  # 0.5 s a word: on target
        answer("three four", seconds=1.25),  # 25% slow, half the tolerance: 5 - 4 x 0.5
        answer("three four", seconds=2.0),  # 100% slow: beyond it
        answer("three four"),  # no speech
        answer("", seconds=1.0),  # speech without words
    ]
    assert pace(responses) == pytest.approx([5.0, 3.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="seconds_per_word -1 must be > 0"):
        reward_factory("wavalign_example_plugins.rewards:SpeechPace", {"seconds_per_word": -1}, "k")()


def test_chirp_decoder_renders_each_code_at_its_own_rate():
    decoder = decoder_factory("wavalign_example_plugins.codec:ChirpDecoder", {"sample_rate": 16000}, "k")()
    audio = decoder.decode([0, 3])
    assert audio.sample_rate == 16000 and len(audio.samples) == 2 * 1280 and audio.seconds == pytest.approx(0.16)
    assert max(abs(s) for s in audio.samples) <= 0.4
    assert audio.samples[:1280] != audio.samples[1280:]  # the sweep names the code
