"""The asr_consistency reward's scoring (rewards/asr.py: AsrConsistency, rewards/consistency.py):
the words a recogniser heard against the response's text channel, WER mapped onto the scale, and
its failure rules. The recogniser here is a stand-in that hears a set transcript per audio (the
real one, on real speech: tests/integration/test_asr_reward.py)."""

from __future__ import annotations

import math

import pytest

from rewards.asr import AsrConsistency
from rewards.consistency import consistency_score, normalized_words
from rewards.types import Audio, ScoredResponse
from wavalign.speech.mel_codec import resample


class Hears:
    """Transcribes audio i as transcripts[i] (audio.samples[0] is i), or fails."""

    def __init__(self, transcripts, fail=False):
        self.transcripts, self.fail, self.calls = transcripts, fail, []

    def transcribe(self, audios):
        self.calls.append(len(audios))
        if self.fail:
            raise RuntimeError("backend down")
        return [self.transcripts[int(a.samples[0])] for a in audios]


def response(text, i):
    return ScoredResponse("q", text, Audio(samples=[float(i), 0.0], sample_rate=16000))


def test_normalisation_and_the_scale():
    assert normalized_words("Seven, plus TWO is nine!\n") == ["seven", "plus", "two", "is", "nine"]
    assert normalized_words("<|im_end|> it's 12") == ["im", "end", "it's", "12"]
    assert [consistency_score(w, 1, 5, 1.0) for w in (0.0, 0.25, 0.5, 1.0, 2.0)] == [5.0, 4.0, 3.0, 1.0, 1.0]
    assert consistency_score(0.25, 1, 5, 0.5) == 3.0  # worst_wer 0.5: half the errors reach the bottom


def test_scores_follow_the_word_error_rate_in_one_batched_call():
    heard = ["seven plus two is nine", "seven plus two is ten", "", "the weather is nice today"]
    fn = AsrConsistency(Hears(heard), scale_min=1.0, scale_max=5.0, worst_wer=1.0)
    texts = ["Seven plus two is nine.", "seven plus two is nine", "seven plus two is nine", "seven plus two is nine"]
    scores = fn([response(t, i) for i, t in enumerate(texts)])
    # WER 0 -> 5; one word of five wrong (0.2) -> 4.2; nothing heard (silence, noise) -> 1; all wrong -> 1
    assert scores == pytest.approx([5.0, 4.2, 1.0, 1.0])
    assert fn.recognizer.calls == [4]  # one backend call for the batch
    assert fn.counters() == {"transcribed": 4, "no_words_heard": 1}


def test_no_text_and_a_failing_backend_give_no_score_counted():
    fn = AsrConsistency(Hears(["a b", "c d"]), 1.0, 5.0, 1.0)
    scores = fn([response("", 0), response("c d", 1)])
    assert math.isnan(scores[0]) and scores[1] == 5.0  # nothing to be consistent with: the default, counted
    assert fn.recognizer.calls == [1]  # only the response with words is transcribed
    failing = AsrConsistency(Hears([], fail=True), 1.0, 5.0, 1.0)
    assert all(math.isnan(s) for s in failing([response("a b", 0), response("c", 1)]))
    assert failing.counters() == {"failures": 2}
    short = AsrConsistency(Hears(["x"]), 1.0, 5.0, 1.0)
    short.recognizer.transcribe = lambda audios: ["x"]  # one transcript for two audios: a broken backend
    assert all(math.isnan(s) for s in short([response("a", 0), response("b", 0)]))


def test_a_response_whose_speech_did_not_decode_is_not_heard_and_gets_no_score():
    fn = AsrConsistency(Hears(["a b", "c d"]), 1.0, 5.0, 1.0)
    undecoded = ScoredResponse("q", "a b", None, speech_error="RuntimeError: bad codes")
    scores = fn([undecoded, response("c d", 1)])
    assert math.isnan(scores[0]) and scores[1] == 5.0  # not "said nothing" (WER 1): no audio to judge
    assert fn.recognizer.calls == [1] and fn.counters() == {"transcribed": 1, "undecodable": 1}


def test_band_limited_resampling_keeps_a_tone_and_drops_what_lies_above_the_new_band():
    import torch

    rate, seconds = 22050, 0.5
    t = torch.arange(int(rate * seconds)) / rate
    low, high = torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 9000 * t)  # 9 kHz: above 16 kHz's band
    out = resample(low + high, rate, 16000)
    assert out.numel() == 8000
    spectrum = torch.fft.rfft(out.double()).abs()
    assert spectrum.argmax().item() == 220  # 440 Hz at 2 Hz per bin
    # nothing folded back from 9 kHz (interpolation would leave it at 7 kHz): float32 rounding only
    assert spectrum[2000:].max() < 1e-3 * spectrum.max()
