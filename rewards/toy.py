"""The toy task's verifiable reward on the method's 1-5 scale."""

from __future__ import annotations

import hashlib
import random
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


class NoisyToyJudge:
    """The toy reward as an imperfect judge would give it (issue 7: a noisy judge, so that RL has
    to learn through reward noise as it does with an LLM judge):

    - with probability `flip_prob` the verdict on a stated result is reversed (right 5 <-> wrong 2);
    - then Gaussian noise of `noise_std` is added and the score is clamped to [low, high].

    The noise is a function of (seed, question, text) only, so a response is always scored the same
    (a temperature-0 judge's errors are systematic; and a resumed run repeats its rewards exactly).
    With flip_prob 0 and noise_std 0 it equals `toy_answer_reward`.
    """

    def __init__(self, noise_std: float, flip_prob: float, seed: int, low: float = 1.0, high: float = 5.0) -> None:
        self.noise_std, self.flip_prob, self.seed, self.low, self.high = noise_std, flip_prob, seed, low, high

    def __call__(self, responses: Sequence[ScoredResponse]) -> list[float]:
        return [self._noisy(r, clean) for r, clean in zip(responses, toy_answer_reward(responses))]

    def _noisy(self, response: ScoredResponse, clean: float) -> float:
        key = hashlib.sha256(f"{self.seed}\x00{response.question}\x00{response.text}".encode()).digest()
        draw = random.Random(key)
        flip, noise = draw.random(), draw.gauss(0.0, 1.0)  # both drawn always: one stream per response
        score = {RIGHT: WRONG_NUMBER, WRONG_NUMBER: RIGHT}.get(clean, clean) if flip < self.flip_prob else clean
        return min(self.high, max(self.low, score + self.noise_std * noise))
