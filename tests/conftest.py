"""Shared helpers: the tiny layout with hand-picked ids, used by the pure unit tests."""

from __future__ import annotations

import pytest

from wavalign.layout import SpeechLayout

# Hand layout for mask tests: ids 0..9 text-ish, BOA 10, EOA 11, eos 12, pad 13, speech codes 20..29.
HAND = dict(speech_start=20, speech_end=30, boa_id=10, eoa_id=11, eos_id=12, pad_id=13)


@pytest.fixture
def hand_layout() -> SpeechLayout:
    return SpeechLayout(**HAND, interleave_ratio=(1, 10, 4, 10))
