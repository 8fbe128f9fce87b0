"""A mono waveform, the type speech decoders return and the speech tokenizers and recognisers take,
and 16-bit PCM WAV files read as one. Pure module: standard library only."""

from __future__ import annotations

import wave
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Audio:
    """A mono waveform: samples in [-1, 1] (float) at `sample_rate` Hz."""

    samples: Sequence[float]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def read_wav(path: str | Path) -> Audio:
    """A 16-bit PCM WAV file as Audio (channels averaged); ValueError when it is not one."""
    try:
        with wave.open(str(path)) as wav:
            if wav.getsampwidth() != 2:
                raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit samples; 16-bit PCM expected")
            channels, rate = wav.getnchannels(), wav.getframerate()
            pcm = array("h", wav.readframes(wav.getnframes()))
    except (wave.Error, EOFError) as err:
        raise ValueError(f"{path}: not a WAV file ({err})") from None
    if channels == 1:  # (one pass in C: a Python loop over the samples would dominate a preparation job)
        samples = array("f", map((1 / 32768.0).__mul__, pcm))
    else:
        samples = array("f", (sum(pcm[i : i + channels]) / (channels * 32768.0) for i in range(0, len(pcm), channels)))
    return Audio(samples=samples, sample_rate=rate)


def write_wav(path: str | Path, audio: Audio) -> None:
    """Audio as a 16-bit PCM mono WAV file (samples clipped to [-1, 1])."""
    pcm = array("h", (int(round(max(-1.0, min(1.0, x)) * 32767)) for x in audio.samples))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(pcm.tobytes())
