"""Speech-token layout: which token ids are speech, which are text, for one tokenizer.

A spoken-dialogue model emits one stream in which discrete speech tokens (`<|audio_0|>` ...) sit in
BOA ... EOA blocks between text chunks (method.md §1.1). The layout names those tokens; ids are
resolved from the tokenizer at start-up and never hard-coded (method §1.2).

Pure module: the tokenizer is duck-typed (anything with `get_vocab()` and `__len__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from wavalign.config import LAYOUT_FIELDS, LayoutConfig, check_interleave_ratio


class TokenizerLike(Protocol):
    def get_vocab(self) -> dict[str, int]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class SpeechLayout:
    """Resolved ids. Speech = ids in [speech_start, speech_end) plus BOA/EOA (if boundaries count)."""

    speech_start: int
    speech_end: int
    boa_id: int
    eoa_id: int
    eos_id: int
    pad_id: int
    interleave_ratio: tuple[int, ...]
    include_audio_boundaries: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.speech_start < self.speech_end:
            raise ValueError(f"empty speech id range [{self.speech_start}, {self.speech_end})")
        for name in ("boa_id", "eoa_id", "eos_id", "pad_id"):
            if self.is_speech_code(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)} lies inside the speech id range")
        check_interleave_ratio(list(self.interleave_ratio))

    @property
    def num_speech_tokens(self) -> int:
        return self.speech_end - self.speech_start

    def is_speech_code(self, token_id: int) -> bool:
        """A codec token (not a boundary)."""
        return self.speech_start <= token_id < self.speech_end

    def is_boundary(self, token_id: int) -> bool:
        return token_id in (self.boa_id, self.eoa_id)


def layout_fields(cfg: LayoutConfig) -> dict[str, Any]:
    """The token names and ratio (the config already holds the preset's values for unset fields)."""
    return {name: getattr(cfg, name) for name in LAYOUT_FIELDS}


def resolve_layout(cfg: LayoutConfig, tokenizer: TokenizerLike, model_vocab_size: int | None = None) -> SpeechLayout:
    """Resolve the configured token names to ids; a missing or misplaced token is an error naming it.

    The method counts every id >= `<|audio_0|>` below the model's vocab size as speech (§1.2). When
    the speech tokens are the tail of the tokenizer, ids the model has beyond the tokenizer (padding
    rows) are therefore speech too; otherwise the range ends after the last speech token.
    """
    fields = layout_fields(cfg)
    vocab = tokenizer.get_vocab()

    def token_id(field: str, token: str) -> int:
        if token not in vocab:
            raise LayoutError(f"model.layout.{field}: token {token!r} is not in the tokenizer")
        return vocab[token]

    fmt, count = fields["speech_token_format"], fields["num_speech_tokens"]
    start = token_id("speech_token_format", fmt.format(i=0))
    for i in range(count):
        name = fmt.format(i=i)
        if vocab.get(name) != start + i:
            found = "missing" if name not in vocab else f"at id {vocab[name]}, expected {start + i}"
            raise LayoutError(
                f"model.layout.speech_token_format: speech token {name!r} (index {i} of {count}) is {found}; "
                "speech tokens must be contiguous ids"
            )
    end = start + count
    if end == len(tokenizer) and model_vocab_size is not None:
        end = max(end, model_vocab_size)
    return SpeechLayout(
        speech_start=start,
        speech_end=end,
        boa_id=token_id("begin_audio_token", fields["begin_audio_token"]),
        eoa_id=token_id("end_audio_token", fields["end_audio_token"]),
        eos_id=token_id("eos_token", fields["eos_token"]),
        pad_id=token_id("pad_token", fields["pad_token"]),
        interleave_ratio=tuple(fields["interleave_ratio"]),
        include_audio_boundaries=cfg.include_audio_boundaries,
    )


class LayoutError(ValueError):
    """The tokenizer does not hold what the layout names."""
