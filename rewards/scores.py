"""Reading a judge's reply: the first `<score>` holding a non-negative number (method.md §4), and
what to do with values outside the scale. Pure module: standard library only."""

from __future__ import annotations

import re

_SCORE = re.compile(r"<score>\s*([0-9]+(?:\.[0-9]+)?)\s*</score>", re.IGNORECASE)


class BadScore(ValueError):
    """The reply holds no usable score; the message says why."""


def parse_score(reply: str) -> float:
    """The first `<score>N</score>` with a non-negative number.

    >>> parse_score("<justification>fine</justification><score>4</score>")
    4.0
    >>> parse_score("<score> 3.5 </score> <score>1</score>")
    3.5
    """
    match = _SCORE.search(reply or "")
    if match is None:
        raise BadScore("no <score>number</score> in the reply")
    return float(match.group(1))


def fit_to_scale(score: float, low: float, high: float, out_of_range: str) -> float:
    """Clamp into [low, high], or reject (`out_of_range="reject"`: the caller uses its default score).

    >>> fit_to_scale(7.0, 1.0, 5.0, "clamp")
    5.0
    """
    if low <= score <= high:
        return score
    if out_of_range == "clamp":
        return min(max(score, low), high)
    raise BadScore(f"score {score:g} outside [{low:g}, {high:g}]")
