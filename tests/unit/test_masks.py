"""Modality masks on hand-written sequences (method.md §1.2–1.3)."""

import pytest
import torch

from learner.masks import BOUNDARY, OUTSIDE, SPEECH, TEXT, completion_mask, modality_codes, modality_masks
from tests.conftest import HAND
from wavalign.layout import SpeechLayout

B, E, EOS, PAD = 10, 11, 12, 13  # BOA, EOA, eos, pad of the hand layout; speech codes are 20..29


def as_list(mask):
    return [int(x) for x in mask.tolist()]


def test_interleaved_response_text_speech_boundary(hand_layout):
    # text 1 | BOA s s EOA | text 2 3 | BOA s EOA | eos, then junk after eos and padding
    ids = torch.tensor([1, B, 20, 21, E, 2, 3, B, 29, E, EOS, 4, 25, PAD])
    m = modality_masks(ids, hand_layout)
    assert as_list(m.completion) == [1] * 11 + [0, 0, 0]  # through the first eos
    assert as_list(m.text) == [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0]  # eos is text
    assert as_list(m.speech) == [0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]  # boundaries are speech
    assert as_list(m.boundary) == [0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0]
    assert as_list(modality_codes(ids, hand_layout)) == [
        TEXT,
        BOUNDARY,
        SPEECH,
        SPEECH,
        BOUNDARY,
        TEXT,
        TEXT,
        BOUNDARY,
        SPEECH,
        BOUNDARY,
        TEXT,
        OUTSIDE,
        OUTSIDE,
        OUTSIDE,
    ]


def test_mask_ends_at_first_eos_and_without_eos_at_last_non_pad(hand_layout):
    ids = torch.tensor([[1, EOS, 2, EOS, PAD], [1, 20, PAD, 2, PAD], [PAD, PAD, PAD, PAD, PAD]])
    assert completion_mask(ids, EOS, PAD).int().tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],  # no eos: up to the last non-pad token, inner pad included
        [0, 0, 0, 0, 0],
    ]


def test_boundaries_excluded_from_both_when_switched_off():
    layout = SpeechLayout(**HAND, interleave_ratio=(1, 10), include_audio_boundaries=False)
    m = modality_masks(torch.tensor([1, B, 20, E, EOS]), layout)
    assert as_list(m.text) == [1, 0, 0, 0, 1]
    assert as_list(m.speech) == [0, 0, 1, 0, 0]


def test_ids_past_the_speech_block_are_text(hand_layout):
    # id 30 is past speech_end (e.g. a special token after the codec block): any other token is text.
    m = modality_masks(torch.tensor([30, 20, EOS]), hand_layout)
    assert as_list(m.text) == [1, 0, 1]


def test_empty_response(hand_layout):
    m = modality_masks(torch.zeros(0, dtype=torch.long), hand_layout)
    assert m.completion.shape == (0,)


@pytest.mark.parametrize("preset", ["tiny", "glm4voice", "vita-audio"])
def test_masks_for_each_preset_on_resolved_ids(preset):
    from tests.unit.test_layout import preset_tokenizer
    from wavalign.config import LayoutConfig
    from wavalign.layout import resolve_layout

    cfg = LayoutConfig(preset=preset)
    tokenizer = preset_tokenizer(cfg)
    layout = resolve_layout(cfg, tokenizer)
    vocab = tokenizer.get_vocab()
    word, boa, eoa, eos = vocab["hello"], vocab[cfg.begin_audio_token], vocab[cfg.end_audio_token], vocab[cfg.eos_token]
    first, last = vocab["<|audio_0|>"], vocab[f"<|audio_{cfg.num_speech_tokens - 1}|>"]
    ids = torch.tensor([word, boa, first, last, eoa, word, eos, word])
    m = modality_masks(ids, layout)
    assert as_list(m.text) == [1, 0, 0, 0, 0, 1, 1, 0]
    assert as_list(m.speech) == [0, 1, 1, 1, 1, 0, 0, 0]
