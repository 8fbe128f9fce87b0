"""Interleaving of a reference answer's text and speech tokens (method.md §5.2).

With ratio (T1, A1, T2, A2, ...): text is cut into chunks of T1, T2, T2, ... tokens and speech into
chunks of A1-2, A2-2, A2-2, ... tokens (an audio block of A tokens holds BOA + speech + EOA). With
n = min(#text chunks, #speech chunks), the first n-1 chunks of each are kept and everything left is
merged into the n-th. Then chunk k is emitted as: text_k, BOA, speech_k, EOA.

Example, ratio (1, 10, 4, 10), 20 text and 100 speech tokens:
    t1 | BOA a1..a8 EOA | t2..t5 | BOA a9..a16 EOA | ... | t18..t20 | BOA a41..a100 EOA

Pure module: standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

from wavalign.layout import SpeechLayout


def split_into_chunks(items: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """Chunks of sizes[0], sizes[1], ..., the last size repeating; the final chunk may be shorter."""
    chunks, start, k = [], 0, 0
    while start < len(items):
        size = sizes[min(k, len(sizes) - 1)]
        chunks.append(list(items[start : start + size]))
        start, k = start + size, k + 1
    return chunks


def interleave(text_ids: Sequence[int], speech_ids: Sequence[int], layout: SpeechLayout) -> list[int]:
    """Interleave text tokens (incl. any newline) with speech codec tokens per the layout's ratio."""
    boa, eoa = layout.boa_id, layout.eoa_id
    if not speech_ids:  # text only: unchanged
        return list(text_ids)
    if not text_ids:  # a single audio block: unchanged
        return [boa, *speech_ids, eoa]
    ratio = layout.interleave_ratio
    text_chunks = split_into_chunks(text_ids, ratio[0::2])
    speech_chunks = split_into_chunks(speech_ids, [a - 2 for a in ratio[1::2]])
    n = min(len(text_chunks), len(speech_chunks))
    text_chunks = text_chunks[: n - 1] + [[t for chunk in text_chunks[n - 1 :] for t in chunk]]
    speech_chunks = speech_chunks[: n - 1] + [[s for chunk in speech_chunks[n - 1 :] for s in chunk]]
    out: list[int] = []
    for text_chunk, speech_chunk in zip(text_chunks, speech_chunks):
        out += [*text_chunk, boa, *speech_chunk, eoa]
    return out


def split_channels(content_ids: Sequence[int], layout: SpeechLayout) -> tuple[list[int], list[int]]:
    """(text ids, speech codec ids) of interleaved content; boundaries belong to neither."""
    text = [t for t in content_ids if not layout.is_speech_code(t) and not layout.is_boundary(t)]
    speech = [t for t in content_ids if layout.is_speech_code(t)]
    return text, speech


def follows_layout(content_ids: Sequence[int], layout: SpeechLayout) -> bool:
    """True when content (without eos) is exactly what interleaving its own two channels gives."""
    text, speech = split_channels(content_ids, layout)
    return interleave(text, speech, layout) == list(content_ids)


def until_eos(ids: Sequence[int], eos_id: int) -> tuple[list[int], bool]:
    """(content before the first eos, whether an eos was found)."""
    ids = list(ids)
    return (ids[: ids.index(eos_id)], True) if eos_id in ids else (ids, False)


def response_channels(response_ids: Sequence[int], layout: SpeechLayout) -> tuple[list[int], list[int], bool]:
    """(text ids, speech codes, ended) of a response up to its first eos: the text channel without
    BOA/EOA and eos, the speech channel as codebook indices (id - speech_start)."""
    content, ended = until_eos(response_ids, layout.eos_id)
    text, speech = split_channels(content, layout)
    return text, [t - layout.speech_start for t in speech], ended


def text_string(text_ids: Sequence[int], tokenizer) -> str:
    """The text channel as the reward functions see it and rollouts.parquet records it: decoded
    with special tokens dropped, surrounding whitespace stripped (any tokenizer with `decode`)."""
    return tokenizer.decode(list(text_ids), skip_special_tokens=True).strip()
