"""Interleaving a reference answer (method.md §5.2), including the method's worked example."""

from tests.conftest import HAND
from wavalign.interleave import follows_layout, interleave, split_channels, split_into_chunks
from wavalign.layout import SpeechLayout

B, E = HAND["boa_id"], HAND["eoa_id"]


def layout(ratio):
    # A wide speech range so that 100 distinct speech ids fit: 1000..1999.
    return SpeechLayout(**{**HAND, "speech_start": 1000, "speech_end": 2000}, interleave_ratio=tuple(ratio))


def test_split_repeats_last_size():
    assert split_into_chunks(list(range(10)), [1, 4]) == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_method_worked_example_1_10_4_10():
    text = list(range(100, 120))  # t1..t20
    speech = list(range(1000, 1100))  # a1..a100
    out = interleave(text, speech, layout([1, 10, 4, 10]))
    # text chunks 1,4,4,4,4,3 (6); speech chunks of 8 (13) -> n = 6; the 6th speech chunk takes a41..a100
    expected = [100, B, *range(1000, 1008), E]
    for k in range(4):
        expected += [*range(101 + 4 * k, 105 + 4 * k), B, *range(1008 + 8 * k, 1016 + 8 * k), E]
    expected += [117, 118, 119, B, *range(1040, 1100), E]
    assert out == expected


def test_more_text_than_speech_merges_text_into_last_chunk():
    # ratio (2, 5): text chunks of 2, speech chunks of 3. 7 text, 4 speech -> n = 2
    out = interleave([1, 2, 3, 4, 5, 6, 7], [1000, 1001, 1002, 1003], layout([2, 5]))
    assert out == [1, 2, B, 1000, 1001, 1002, E, 3, 4, 5, 6, 7, B, 1003, E]


def test_text_only_and_speech_only_are_unchanged():
    assert interleave([1, 2, 3], [], layout([1, 10])) == [1, 2, 3]
    assert interleave([], [1000, 1001], layout([1, 10])) == [B, 1000, 1001, E]


def test_split_channels_and_follows_layout():
    lay = layout([1, 4])
    content = interleave([1, 2, 3], [1000, 1001, 1002, 1003, 1004], lay)
    assert content == [1, B, 1000, 1001, E, 2, B, 1002, 1003, E, 3, B, 1004, E]
    assert split_channels(content, lay) == ([1, 2, 3], [1000, 1001, 1002, 1003, 1004])
    assert follows_layout(content, lay)
    # three speech tokens in the first block where the ratio allows two
    assert not follows_layout([1, B, 1000, 1001, 1002, E, 2, B, 1003, E], lay)
