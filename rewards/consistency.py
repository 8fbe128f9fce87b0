"""Speech–text consistency as a score (the asr_consistency reward's math): the words a recogniser
heard in a response's speech against the words of the response's own text channel.

Both sides are normalised the same way (lower case, digits and letters kept, everything else a word
break), and the word error rate, WER = (substitutions + deletions + insertions) / words of the text,
maps linearly onto the judge's scale: WER 0 scores scale_max, WER >= worst_wer scores scale_min.
A response whose text channel has no words has nothing to be consistent with: no score (None; the
caller gives the default, counted). Speech that says nothing (silence, noise the recogniser hears
no words in) against a text that says something is WER 1: scale_min with the default worst_wer.
Pure module: standard library only.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+")


def normalized_words(text: str) -> list[str]:
    """>>> normalized_words("Seven, plus TWO is nine!")
    ['seven', 'plus', 'two', 'is', 'nine']"""
    return _WORD.findall(text.lower())


def consistency_score(wer: float, scale_min: float, scale_max: float, worst_wer: float) -> float:
    """>>> consistency_score(0.0, 1, 5, 1.0), consistency_score(0.25, 1, 5, 1.0), consistency_score(3.0, 1, 5, 1.0)
    (5.0, 4.0, 1.0)"""
    return float(scale_max - (scale_max - scale_min) * min(1.0, wer / worst_wer))
