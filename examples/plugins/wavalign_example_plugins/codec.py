"""A speech-decoder plug-in (rewards/speech.py: SpeechDecoder): codes -> a waveform at its own rate.

A real one wraps the model's codec decoder (GLM-4-Voice: speech tokens -> flow matching -> HiFT
vocoder at 22,050 Hz) and loads its weights in __init__, once per reward worker. This one renders
each code as a short chirp at a configurable rate, so the judge's audio shows which decoder made it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rewards.types import Audio


class ChirpDecoder:
    def __init__(self, sample_rate: int = 16000, seconds_per_code: float = 0.08) -> None:
        if sample_rate <= 0 or seconds_per_code <= 0:
            raise ValueError(f"sample_rate {sample_rate} and seconds_per_code {seconds_per_code} must be > 0")
        self.sample_rate, self.seconds_per_code = sample_rate, seconds_per_code

    def decode(self, codes: Sequence[int]) -> Audio:
        per_code = round(self.sample_rate * self.seconds_per_code)
        samples = []
        for code in codes:
            start, end = 150.0 + 5.0 * code, 300.0 + 5.0 * code  # Hz: the chirp's sweep names the code
            for i in range(per_code):
                t = i / self.sample_rate
                phase = 2 * math.pi * (start * t + (end - start) * t * t / (2 * self.seconds_per_code))
                samples.append(0.4 * math.sin(phase))
        return Audio(samples=samples, sample_rate=self.sample_rate)
