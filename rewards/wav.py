"""WAV encoding of a waveform for a judge request (method.md §4): mono, peak-normalised only when
|x| > 1, 16-bit PCM, base64. The header carries the waveform's true sample rate; the authors' code
wrote 24,000 Hz for 22,050 Hz audio (method §15 item 2), which `header_rate` can reproduce.
Pure module: standard library only."""

from __future__ import annotations

import base64
import io
import wave
from array import array

from rewards.types import Audio


def wav_bytes(audio: Audio, header_rate: int | None = None) -> bytes:
    peak = max((abs(x) for x in audio.samples), default=0.0)
    scale = 32767.0 / peak if peak > 1.0 else 32767.0
    pcm = array("h", (int(round(x * scale)) for x in audio.samples))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(header_rate or audio.sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def wav_base64(audio: Audio, header_rate: int | None = None) -> str:
    return base64.b64encode(wav_bytes(audio, header_rate)).decode("ascii")
