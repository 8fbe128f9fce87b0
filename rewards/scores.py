"""Reading a judge's reply: the first `<score>` holding a non-negative number (method.md §4), and
what to do with values outside the scale. Pure module: standard library only."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

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
    if not math.isfinite(score):
        raise BadScore(f"score {score} is not a finite number")
    if low <= score <= high:
        return score
    if out_of_range == "clamp":
        return min(max(score, low), high)
    raise BadScore(f"score {score:g} outside [{low:g}, {high:g}]")


def checked_scores(
    name: str, values: object, n: int, low: float, high: float, default: float
) -> tuple[list[float], int]:
    """A reward function's column with every unusable score (not a number, non-finite, outside
    [low, high]) replaced by `default`, and how many were replaced. A column that is not one value
    per response is the function's bug: an error naming it.

    >>> checked_scores("rm", [4, float("nan"), 9.0, "x"], 4, 1.0, 5.0, 2.5)
    ([4.0, 2.5, 2.5, 2.5], 3)
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(
            f"reward function {name!r} returned {type(values).__name__} for {n} responses; "
            "it must return one float per response"
        )
    values = list(values)  # a list, a tuple, a NumPy array, a tensor
    if len(values) != n:
        raise ValueError(
            f"reward function {name!r} returned {len(values)} values for {n} responses; "
            "it must return one float per response"
        )
    checked, replaced = [], 0
    for value in values:
        try:
            if isinstance(value, bool) or not hasattr(type(value), "__float__"):  # numbers, NumPy and 0-d tensors
                raise BadScore(f"{value!r} is not a number")
            checked.append(fit_to_scale(float(value), low, high, "default"))
        except BadScore:
            checked.append(default)
            replaced += 1
    return checked, replaced
