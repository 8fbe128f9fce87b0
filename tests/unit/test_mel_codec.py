"""The DSP speech codec (wavalign/speech/mel_codec.py) on signals whose answer is known: tones of
set pitches. The code sequence's round trip on real speech: tests/integration/test_prepare.py."""

from __future__ import annotations

import math

import pytest
import torch

from wavalign.audio import Audio
from wavalign.speech.mel_codec import MelCodec, MelFrames, MelSettings, fit_codebook, mel_filterbank


def tones(pitches, seconds_each=0.24, rate=16000):
    t = torch.arange(int(rate * seconds_each)) / rate
    return Audio(torch.cat([0.5 * torch.sin(2 * math.pi * p * t) for p in pitches]).tolist(), rate)


def test_frames_come_at_the_set_rate_and_the_filterbank_covers_the_band():
    s = MelSettings()
    assert s.hop == 1280 and s.n_fft == 2560
    filters = mel_filterbank(s)
    covered = filters.sum(dim=0) > 0  # bins of 6.25 Hz: 60 Hz .. 7.6 kHz covered, nothing outside
    assert filters.shape == (40, 1281) and covered[10:1216].all() and not covered[:9].any() and not covered[1217:].any()
    assert MelFrames().log_mel(tones([440] * 10)).shape == (30, 40)  # 2.4 s at 12.5 frames/s


def test_kmeans_finds_well_separated_clusters():
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in centres])
    found = fit_codebook(points, 3)
    assert sorted(found.round().tolist()) == sorted(centres.tolist())
    with pytest.raises(ValueError, match="3 frames cannot fit a codebook of 4"):
        fit_codebook(points[:3], 4)


def test_tones_encode_by_pitch_and_decode_back_to_their_pitch():
    pitches = [300, 600, 1200, 2400]
    frames = MelFrames().log_mel(tones(pitches * 3))
    codec = MelCodec(fit_codebook(frames, 8))  # room for the frames that straddle two tones
    (codes,) = codec.encode([tones([300, 600, 1200, 2400, 300])])
    steady = codes[1::3]  # each 0.24 s tone spans 3 frames: the middle one lies wholly inside it
    assert len(set(steady[:4])) == 4 and steady[4] == steady[0]  # one code per pitch, the same code again
    back = codec.decode(codes)
    assert back.sample_rate == 16000 and abs(back.seconds - 1.2) < 0.08
    # each tone's steady stretch of the decoded audio peaks near its pitch (within a mel band there)
    samples = torch.tensor(back.samples)
    for k, pitch in enumerate([300, 600, 1200, 2400]):
        middle = samples[int((0.24 * k + 0.06) * 16000) : int((0.24 * k + 0.18) * 16000)]
        peak_hz = (
            torch.fft.rfft(middle * torch.hann_window(middle.numel())).abs().argmax().item() * 16000 / middle.numel()
        )
        assert abs(peak_hz - pitch) <= 0.2 * pitch, (pitch, peak_hz)
    assert codec.decode([]).seconds == 0


@pytest.mark.parametrize("n_codes", [1, 2])
def test_a_response_of_one_or_two_codes_decodes_and_audio_of_one_frame_encodes(n_codes):
    # one frame is 1280 samples, a centred window mirrors 1280 at each edge: more than one frame holds
    codec = MelCodec(fit_codebook(MelFrames().log_mel(tones([300, 600, 1200, 2400] * 2)), 4))
    back = codec.decode([1] * n_codes)
    assert len(back.samples) == 1280 * n_codes and all(math.isfinite(x) for x in back.samples)
    (codes,) = codec.encode([Audio(back.samples[:1000], 16000)])  # under one frame
    assert len(codes) == 1
