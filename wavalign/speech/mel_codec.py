"""A small speech codec built from signal processing, no learnt model: log-mel frames at a low rate
(12.5 per second by default, GLM-4-Voice's token rate) quantised by a k-means codebook fitted on
the audio being prepared; decoding looks the codes' centroids up and turns the log-mel frames back
into a waveform (mel filterbank pseudo-inverse, then Griffin-Lim phase recovery). It is what the
project's tests and toy path tokenize real speech with; real models bring their own tokenizer and
decoder as plug-ins (`python -m wavalign.prepare --tokenizer`, reward.speech_decoder).

Lossy by design (a 256-word codebook of 80 ms frames): what round-trips is the code sequence
(encode(decode(codes)) gives back most codes) and the audio's length and loudness contour, not
intelligible speech. Pure module: torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wavalign.audio import Audio


@dataclass(frozen=True)
class MelSettings:
    sample_rate: int = 16000
    frame_rate: float = 12.5  # frames (codes) per second
    n_mels: int = 40
    fmin: float = 60.0
    fmax: float = 7600.0

    @property
    def hop(self) -> int:
        return round(self.sample_rate / self.frame_rate)

    @property
    def n_fft(self) -> int:
        return 2 * self.hop  # windows overlap by half


def resample(samples: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """Band-limited resampling by FFT (the spectrum cut or zero-padded at the new Nyquist): nothing
    above the target's band folds back into it, as plain interpolation would leave (it costs a
    recogniser words)."""
    if rate == target or samples.numel() == 0:
        return samples
    length = max(1, round(samples.numel() * target / rate))
    spectrum = torch.fft.rfft(samples.double())
    kept = torch.zeros(length // 2 + 1, dtype=spectrum.dtype)
    n = min(kept.numel(), spectrum.numel())
    kept[:n] = spectrum[:n]
    return (torch.fft.irfft(kept, n=length) * (length / samples.numel())).float()


def mel_filterbank(s: MelSettings) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the mel scale."""

    def mel(hz):
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    points = torch.linspace(mel(s.fmin), mel(s.fmax), s.n_mels + 2)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)
    bins = torch.linspace(0, s.sample_rate / 2, s.n_fft // 2 + 1)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class MelFrames:
    """Waveform <-> log-mel frames at MelSettings' rate."""

    def __init__(self, settings: MelSettings = MelSettings()) -> None:
        self.s = settings
        self.filters = mel_filterbank(settings)
        self.inverse = torch.linalg.pinv(self.filters)
        self.window = torch.hann_window(settings.n_fft)

    def log_mel(self, audio: Audio) -> torch.Tensor:
        """(frames, n_mels): one frame per hop, the last one partial; a silent floor of log(1e-5)."""
        samples = resample(torch.as_tensor(audio.samples, dtype=torch.float32), audio.sample_rate, self.s.sample_rate)
        frames = max(1, math.ceil(samples.numel() / self.s.hop))
        padded = torch.nn.functional.pad(samples, (0, frames * self.s.hop - samples.numel()))
        spectrum = self._stft(padded).abs()[:, :frames]
        return torch.log(self.filters @ spectrum.pow(2) + 1e-5).T

    def _stft(self, signal: torch.Tensor) -> torch.Tensor:
        """The centred STFT. Its edges are mirrored, which needs more than half a window of signal:
        a shorter one (a single frame, e.g. a response of one speech code) is padded with zeros."""
        mirror = signal.numel() > self.s.n_fft // 2
        return torch.stft(
            signal,
            self.s.n_fft,
            self.s.hop,
            window=self.window,
            center=True,
            pad_mode="reflect" if mirror else "constant",
            return_complex=True,
        )

    def waveform(self, log_mel: torch.Tensor, iterations: int = 32) -> torch.Tensor:
        """A waveform whose log-mel frames approach `log_mel`: power through the filterbank's
        pseudo-inverse, then Griffin-Lim (phase estimated from consistent STFTs)."""
        power = torch.clamp(self.inverse @ torch.exp(log_mel.T), min=0.0)
        # a centred STFT of frames x hop samples has one frame more than log_mel (the end): the last again
        magnitude = torch.cat([power, power[:, -1:]], dim=1).sqrt()
        length = log_mel.shape[0] * self.s.hop
        generator = torch.Generator().manual_seed(0)
        phase = torch.exp(2j * math.pi * torch.rand(magnitude.shape, generator=generator))
        istft_args = {"n_fft": self.s.n_fft, "hop_length": self.s.hop, "window": self.window, "center": True}
        for _ in range(iterations):
            signal = torch.istft(magnitude * phase, length=length, **istft_args)
            rebuilt = self._stft(signal)[:, : magnitude.shape[1]]
            phase = torch.exp(1j * torch.angle(rebuilt))
        signal = torch.istft(magnitude * phase, length=length, **istft_args)
        peak = signal.abs().max()
        return signal / peak * 0.9 if peak > 0.9 else signal


def fit_codebook(frames: torch.Tensor, size: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """k-means (k-means++ seeding, then Lloyd's iterations) of (N, D) frames into `size` centroids;
    fewer distinct frames than `size` is an error (the codebook would hold duplicates)."""
    frames = frames.float()
    if frames.shape[0] < size:
        raise ValueError(f"{frames.shape[0]} frames cannot fit a codebook of {size}: prepare more audio")
    generator = torch.Generator().manual_seed(seed)
    centroids = frames[torch.randint(frames.shape[0], (1,), generator=generator)]
    nearest = torch.cdist(frames, centroids).squeeze(1).pow(2)
    for _ in range(size - 1):  # k-means++: each next seed drawn in proportion to its squared distance
        pick = torch.multinomial(nearest + 1e-12, 1, generator=generator)
        centroids = torch.cat([centroids, frames[pick]])
        nearest = torch.minimum(nearest, torch.cdist(frames, frames[pick]).squeeze(1).pow(2))
    for _ in range(iterations):
        assignment = torch.cdist(frames, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, frames)
        counts = torch.bincount(assignment, minlength=size).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cluster keeps its place
    return centroids


class MelCodec:
    """Audio <-> codes 0..len(codebook)-1 with a fitted codebook (fit_codebook)."""

    def __init__(self, codebook: torch.Tensor, settings: MelSettings = MelSettings()) -> None:
        if codebook.ndim != 2 or codebook.shape[1] != settings.n_mels:
            raise ValueError(f"a codebook of shape {tuple(codebook.shape)} does not fit {settings.n_mels} mel bands")
        self.codebook, self.frames = codebook.float(), MelFrames(settings)

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def encode(self, audios: Sequence[Audio]) -> list[list[int]]:
        return [torch.cdist(self.frames.log_mel(a), self.codebook).argmin(dim=1).tolist() for a in audios]

    def decode(self, codes: Sequence[int]) -> Audio:
        if not len(codes):
            return Audio(samples=[], sample_rate=self.frames.s.sample_rate)
        log_mel = self.codebook[torch.as_tensor(list(codes), dtype=torch.long)]
        return Audio(samples=self.frames.waveform(log_mel).tolist(), sample_rate=self.frames.s.sample_rate)
