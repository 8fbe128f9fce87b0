"""A toy speech codec: every word has a fixed, seeded "pronunciation" of speech codes.

Real spoken-dialogue models turn text into speech tokens with a learnt codec; this one is a lookup
table so that speech can be produced from text and decoded back to words exactly. Pronunciations
are prefix-free (no word's code sequence starts another's), so a code stream decodes greedily left
to right without ambiguity. Codes are codebook indices 0..num_codes-1; a layout maps them to token
ids (speech_start + code).

Pure module: standard library only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

UNKNOWN_WORD = "<unk>"


class ToyCodec:
    """Word <-> speech-code lookup with prefix-free pronunciations.

    >>> codec = ToyCodec(["one", "two"], num_codes=16, seed=0, min_len=2, max_len=3)
    >>> codec.decode(codec.encode(["two", "one"]))
    ['two', 'one']
    """

    def __init__(self, words: Sequence[str], num_codes: int, seed: int, min_len: int, max_len: int) -> None:
        if len(set(words)) != len(words):
            raise ValueError("codec words must be unique")
        rng = random.Random(seed)
        self.num_codes = num_codes
        self.pronunciations: dict[str, tuple[int, ...]] = {}
        for word in words:  # order matters: the table depends only on (words, num_codes, seed, lengths)
            self.pronunciations[word] = self._fresh_pronunciation(rng, min_len, max_len)
        self._by_first_code: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for word, codes in self.pronunciations.items():
            self._by_first_code.setdefault(codes[0], []).append((codes, word))

    def _fresh_pronunciation(self, rng: random.Random, min_len: int, max_len: int) -> tuple[int, ...]:
        for _ in range(10_000):
            codes = tuple(rng.randrange(self.num_codes) for _ in range(rng.randint(min_len, max_len)))
            if not any(_prefix_related(codes, other) for other in self.pronunciations.values()):
                return codes
        raise ValueError("codebook too small for prefix-free pronunciations of every word")

    def encode(self, words: Sequence[str]) -> list[int]:
        """Speech codes of a word sequence (unknown words are an error)."""
        codes: list[int] = []
        for word in words:
            if word not in self.pronunciations:
                raise KeyError(f"word {word!r} has no pronunciation")
            codes.extend(self.pronunciations[word])
        return codes

    def decode(self, codes: Sequence[int]) -> list[str]:
        """Words heard in a code stream; each run of codes that spells no word becomes one '<unk>'."""
        words: list[str] = []
        i = 0
        while i < len(codes):
            match = next(
                (w for c, w in self._by_first_code.get(codes[i], []) if tuple(codes[i : i + len(c)]) == c), None
            )
            if match is not None:
                words.append(match)
                i += len(self.pronunciations[match])
            else:
                if not words or words[-1] != UNKNOWN_WORD:
                    words.append(UNKNOWN_WORD)
                i += 1
        return words


def _prefix_related(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]
