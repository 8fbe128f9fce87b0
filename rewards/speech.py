"""Speech decoding for the reward path: speech codes -> waveform + its true sample rate.

Real systems plug in their codec decoder (GLM-4-Voice: flow matching + HiFT vocoder, 22,050 Hz) by
implementing `SpeechDecoder`; the toy codec's decoder is built in so the audio path to the judge runs
end to end. Pure module: standard library only.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Protocol

from rewards.types import Audio


class SpeechDecoder(Protocol):
    def decode(self, codes: Sequence[int]) -> Audio:
        """Speech codes (codebook indices, not token ids) -> waveform at the decoder's true rate."""
        ...


class ToySpeechDecoder:
    """Each code becomes an 80 ms tone (12.5 codes per second, GLM-4-Voice's token rate) whose pitch
    identifies the code: 200 Hz + 10 Hz x code, at half amplitude, 22,050 Hz.

    >>> audio = ToySpeechDecoder().decode([0, 1])
    >>> audio.sample_rate, len(audio.samples), round(audio.seconds, 2)
    (22050, 3528, 0.16)
    """

    sample_rate = 22050
    seconds_per_code = 0.08

    def decode(self, codes: Sequence[int]) -> Audio:
        per_code = round(self.sample_rate * self.seconds_per_code)
        samples = array("f")
        for code in codes:
            step = 2 * math.pi * (200.0 + 10.0 * code) / self.sample_rate
            samples.extend(0.5 * math.sin(step * i) for i in range(per_code))
        return Audio(samples=samples, sample_rate=self.sample_rate)
