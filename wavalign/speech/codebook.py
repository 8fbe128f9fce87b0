"""The mel codec's codebook file (safetensors: the centroids, the mel settings as metadata), and
the two plug-in classes that load it: the speech tokenizer of `python -m wavalign.prepare`
(`mel_kmeans`: encode(audios) -> codes) and the matching speech decoder for the reward workers
(reward.speech_decoder: {path: wavalign.speech.codebook:MelKMeansDecoder, kwargs: {codebook: ...}}).
The one file that reads and writes safetensors for the codec."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from wavalign.atomic import atomic_path
from wavalign.audio import Audio
from wavalign.speech.mel_codec import MelCodec, MelSettings


def save_codebook(path: str | Path, centroids, settings: MelSettings) -> None:
    from safetensors.torch import save_file

    with atomic_path(Path(path)) as partial:
        metadata = {"mel": json.dumps(dataclasses.asdict(settings))}
        save_file({"centroids": centroids.contiguous()}, str(partial), metadata=metadata)


def load_codec(path: str | Path) -> MelCodec:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as stored:
            settings = MelSettings(**json.loads(stored.metadata()["mel"]))
            return MelCodec(stored.get_tensor("centroids"), settings)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a mel codebook file ({type(err).__name__}: {err})") from None


class MelKMeansTokenizer:
    """Speech tokenizer plug-in: audio -> codes of the codebook at `codebook`."""

    def __init__(self, codebook: str) -> None:
        self.codec = load_codec(codebook)
        self.num_codes = self.codec.num_codes

    def encode(self, audios: Sequence[Audio]) -> list[list[int]]:
        return self.codec.encode(audios)


class MelKMeansDecoder:
    """Speech decoder plug-in (rewards/speech.py: SpeechDecoder): codes -> audio, 16 kHz."""

    def __init__(self, codebook: str) -> None:
        self.codec = load_codec(codebook)

    def decode(self, codes: Sequence[int]) -> Audio:
        return self.codec.decode([c for c in codes if 0 <= c < self.codec.num_codes])
