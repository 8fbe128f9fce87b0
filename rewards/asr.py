"""The asr_consistency reward and its default recogniser: the only file that imports an ASR package
(pocketsphinx) and jiwer.

AsrConsistency transcribes each response's decoded speech with the configured backend (a class with
transcribe(audios) -> list[str], reward.asr.backend) in one batched call per scoring call, and
scores the agreement with the response's text channel (rewards/consistency.py: WER via jiwer, mapped
onto the scale). Failure rules as the judge's: a backend that raises gives no scores for that call
(NaN: the reward worker puts the default score in, counted as the function's invalid scores), and
its counters say how many transcriptions failed; a response without text words gets NaN too.

PocketSphinxRecognizer is the default backend: CMU PocketSphinx 5 with the US English acoustic
model, dictionary and language model that ship inside its wheel (nothing downloaded), on CPU, one
utterance at a time, audio resampled to its 16 kHz by band-limited (FFT) resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rewards.consistency import consistency_score, normalized_words
from rewards.types import Audio, ScoredResponse


class AsrConsistency:
    def __init__(self, recognizer, scale_min: float, scale_max: float, worst_wer: float) -> None:
        self.recognizer = recognizer
        self.scale = (scale_min, scale_max)
        self.worst_wer = worst_wer
        self.stats = {"transcribed": 0, "failures": 0, "no_text": 0, "no_words_heard": 0, "undecodable": 0}

    def __call__(self, responses: Sequence[ScoredResponse]) -> list[float]:
        import jiwer

        texted = [i for i, r in enumerate(responses) if normalized_words(r.text)]
        wanted = [i for i in texted if responses[i].speech_error is None]  # no audio to hear: NaN
        self.stats["no_text"] += len(responses) - len(texted)
        self.stats["undecodable"] += len(texted) - len(wanted)
        scores = [math.nan] * len(responses)
        audios = [responses[i].audio or Audio(samples=[], sample_rate=16000) for i in wanted]
        try:
            heard = list(self.recognizer.transcribe(audios)) if audios else []
            if len(heard) != len(audios):
                raise ValueError(f"{len(heard)} transcripts for {len(audios)} audios")
        except Exception:  # the backend's failure costs this call's scores, not the run
            self.stats["failures"] += len(audios)
            return scores
        self.stats["transcribed"] += len(audios)
        for i, transcript in zip(wanted, heard):
            said = normalized_words(transcript or "")
            self.stats["no_words_heard"] += not said
            wer = jiwer.wer(" ".join(normalized_words(responses[i].text)), " ".join(said) or "<nothing>")
            scores[i] = consistency_score(wer, *self.scale, self.worst_wer)
        return scores

    def counters(self) -> dict[str, int]:
        return {key: value for key, value in self.stats.items() if value}


# PocketSphinx's search bounded as its "fast" settings do (fewer active HMMs and words per frame,
# fewer Gaussians): measured on synthesized speech, as many sentences right as the unbounded default
# (7 of 10 exact) at 3.6x its speed, and non-speech (the toy decoder's tones) 2.6x faster.
FAST_SEARCH = {"maxhmmpf": 3000, "maxwpf": 5, "topn": 2, "pl_window": 5}


class PocketSphinxRecognizer:
    """options: PocketSphinx decoder settings (reward.asr.kwargs), over FAST_SEARCH; e.g. hmm, dict
    and lm for another language's model files."""

    sample_rate = 16000

    def __init__(self, **options) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=self.sample_rate, loglevel="FATAL", **{**FAST_SEARCH, **options})

    def transcribe(self, audios: Sequence[Audio]) -> list[str]:
        import torch

        from wavalign.speech.mel_codec import resample

        return [
            self._one(resample(torch.as_tensor(a.samples, dtype=torch.float32), a.sample_rate, self.sample_rate))
            for a in audios
        ]

    def _one(self, samples) -> str:
        """samples: a float tensor at self.sample_rate."""
        import torch

        if samples.numel() == 0:
            return ""
        pcm = (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""
