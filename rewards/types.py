"""What a reward function sees, and the one signature every reward function has.

    RewardFn = Callable[[Sequence[ScoredResponse]], list[float]]

A reward function scores a batch of responses and returns one float per response, on the judge's
scale (method.md §4: 1 to 5). It sees the *semantic* view of a response: the plain question, the
response's text channel (special tokens stripped), the decoded speech if a speech decoder is
configured, and the dataset's reference answer. Pure module: standard library only (and wavalign.audio).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wavalign.audio import Audio  # what speech decoders return (re-exported: rewards.types.Audio)


@dataclass(frozen=True)
class ScoredResponse:
    question: str  # the plain-text question (`question_text`)
    text: str  # the response's text channel, special tokens stripped
    audio: Audio | None = None  # the decoded speech channel, when a speech decoder is configured
    reference: str | None = None  # the dataset's reference answer text (`sft_target_text`)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the toy task's `answer`
    # why the speech channel has no audio although it has codes (the speech decoder failed on them):
    # a function that listens scores such a response NaN (the default score, counted)
    speech_error: str | None = None


RewardFn = Callable[[Sequence[ScoredResponse]], list[float]]
