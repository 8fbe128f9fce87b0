"""The toy task's verifiable reward on the method's 1-5 scale."""

from __future__ import annotations

from collections.abc import Sequence

from rewards.types import ScoredResponse
from wavalign.toy.task import parse_answer

RIGHT, WRONG_NUMBER, NO_ANSWER = 5.0, 2.0, 1.0


def toy_answer_reward(responses: Sequence[ScoredResponse]) -> list[float]:
    """5 when the text channel states the right result, else 1 — with one step of partial credit:
    2 when it states *a* result ("... is <number>") that is wrong, 1 when it states none. The partial
    credit rewards a well-formed answer, so groups of wrong answers still differ from garbage.

    The correct result comes from `extra["answer"]`.

    >>> from rewards.types import ScoredResponse as R
    >>> toy_answer_reward([R("what is two plus two", "two plus two is four", extra={"answer": 4}),
    ...                    R("what is two plus two", "two plus two is five", extra={"answer": 4}),
    ...                    R("what is two plus two", "two plus", extra={"answer": 4})])
    [5.0, 2.0, 1.0]
    """
    scores = []
    for response in responses:
        stated = parse_answer(response.text.split())
        if stated is None:
            scores.append(NO_ANSWER)
        else:
            scores.append(RIGHT if stated == int(response.extra["answer"]) else WRONG_NUMBER)
    return scores
