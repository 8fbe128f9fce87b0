"""The asr_consistency reward with its built-in recogniser (PocketSphinx, offline) on real speech:
sentences synthesized by flite, scored against their own text and against another sentence's,
and silence and noise. The separation asserted is the one the README states."""

from __future__ import annotations

import random
import statistics
from array import array

import pytest

from rewards.registry import build_reward_functions
from rewards.types import Audio, ScoredResponse
from wavalign.config import RewardConfig
from wavalign.speech.synthesize import SAMPLE_SENTENCES, available, synthesize

pytestmark = pytest.mark.skipif(not available("flite"), reason="flite is not installed (scripts/install.sh)")

SENTENCES = SAMPLE_SENTENCES
VOICES = ("slt", "awb")


@pytest.fixture(scope="module")
def scored():
    cfg = RewardConfig(functions=[{"name": "asr_consistency"}])
    fn = build_reward_functions(cfg)["asr_consistency"]
    speech = [(text, synthesize(text, voice)) for text in SENTENCES for voice in VOICES]
    others = [SENTENCES[(SENTENCES.index(text) + 3) % len(SENTENCES)] for text, _ in speech]
    rng = random.Random(0)
    silence = Audio(samples=array("f", [0.0] * 32000), sample_rate=16000)
    noise = Audio(samples=array("f", [rng.uniform(-0.3, 0.3) for _ in range(32000)]), sample_rate=16000)
    responses = [
        *(ScoredResponse("q", text, audio) for text, audio in speech),  # the text it says
        *(ScoredResponse("q", other, audio) for other, (_, audio) in zip(others, speech)),  # another sentence
        ScoredResponse("q", SENTENCES[0], silence),
        ScoredResponse("q", SENTENCES[0], noise),
    ]
    scores = fn(responses)
    n = len(speech)
    return scores[:n], scores[n : 2 * n], scores[-2], scores[-1], fn.counters()


def test_speech_that_says_its_text_scores_high_and_another_sentence_low(scored):
    matching, mismatching, *_ = scored
    assert statistics.mean(matching) >= 4.0 and min(matching) >= 3.0, matching
    assert statistics.mean(mismatching) <= 1.5 and max(mismatching) <= 2.0, mismatching
    assert min(matching) > max(mismatching)  # every matching response above every mismatching one


def test_silence_and_noise_score_the_bottom(scored):
    *_, silence, noise, counters = scored
    assert silence == 1.0 and noise <= 1.5
    assert counters["transcribed"] == 2 * len(SENTENCES) * len(VOICES) + 2 and "failures" not in counters
