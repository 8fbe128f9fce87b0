"""The toy spoken-dialogue task: spoken arithmetic.

The user asks, in speech, "what is three plus four"; the assistant answers in interleaved text and
speech: "three plus four is seven". Two axes can be measured on any response (see metrics.py):
- semantic: is the number after the last "is" in the text channel the right result;
- acoustic: does the speech channel decode (toy codec) back to the words of the text channel.

Rows carry the WavAlign data fields (method.md §9) plus token ids, so they can be written to
JSONL/Parquet and read back by the generic reader. Pure module: standard library only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
).split()
OPERATORS = ("plus", "minus")
SYSTEM_PROMPT = "you are a voice assistant"
AUDIO_PLACEHOLDER = "<|audio|>"
ROLE_WORDS = ("system", "user", "assistant")
TASK_WORDS = ("what", "is", *OPERATORS)
HEDGE, HEDGE_WORD = -1, "what"  # a stated "result" that is none: "three plus four is what"


def vocabulary_words() -> list[str]:
    """Every plain word the task uses, in a fixed order (the codec's table depends on it)."""
    words: list[str] = []
    for word in (*ROLE_WORDS, *SYSTEM_PROMPT.split(), *TASK_WORDS, *NUMBER_WORDS):
        if word not in words:
            words.append(word)
    return words


@dataclass(frozen=True)
class Question:
    left: int
    operator: str
    right: int

    @property
    def result(self) -> int:
        return self.left + self.right if self.operator == "plus" else self.left - self.right

    @property
    def key(self) -> str:
        return f"{self.left}-{self.operator}-{self.right}"

    def question_words(self) -> list[str]:
        return ["what", "is", NUMBER_WORDS[self.left], self.operator, NUMBER_WORDS[self.right]]

    def answer_words(self, stated_result: int | None = None) -> list[str]:
        """The spoken answer; `stated_result` replaces the true result (for deliberately wrong answers;
        HEDGE: "what" in its place, an answer with no result)."""
        result = self.result if stated_result is None else stated_result
        stated = HEDGE_WORD if result == HEDGE else NUMBER_WORDS[result]
        return [NUMBER_WORDS[self.left], self.operator, NUMBER_WORDS[self.right], "is", stated]

    def wrong_result(self, rng: random.Random, rule: str = "nearby") -> int:
        """A plausible wrong result, within the number words: `nearby` one off by 1 to 3 (seeded),
        `next` the result + 1 (- 1 at the top), `left_operand` the first number (+ 1 where that is
        the result); `hedge`: HEDGE, no result at all (the question's own "what" in its place)."""
        if rule == "hedge":
            return HEDGE
        if rule == "next":
            return self.result + 1 if self.result + 1 < len(NUMBER_WORDS) else self.result - 1
        if rule == "left_operand":
            return self.left if self.left != self.result else self.left + 1
        candidates = [r for d in (1, 2, 3) for r in (self.result - d, self.result + d) if 0 <= r < len(NUMBER_WORDS)]
        return rng.choice(candidates)


def all_questions(max_operand: int) -> list[Question]:
    """Sums and non-negative differences of operands 0..max_operand (results stay in NUMBER_WORDS)."""
    questions = []
    for left in range(max_operand + 1):
        for right in range(max_operand + 1):
            questions.append(Question(left, "plus", right))
            if left >= right:
                questions.append(Question(left, "minus", right))
    return questions


def split_questions(
    questions: list[Question], eval_fraction: float, seed: int
) -> tuple[list[Question], list[Question]]:
    """A seeded (train, eval) split; eval holds at least one question."""
    shuffled = list(questions)
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * eval_fraction))
    return shuffled[n_eval:], shuffled[:n_eval]


def parse_answer(text_words: list[str]) -> int | None:
    """The number word right after the last "is", or None when the answer is not well-formed.

    >>> parse_answer("three plus four is seven".split())
    7
    >>> parse_answer("three plus four".split()) is None
    True
    """
    positions = [i for i, w in enumerate(text_words) if w == "is"]
    if not positions or positions[-1] + 1 >= len(text_words):
        return None
    word = text_words[positions[-1] + 1]
    return NUMBER_WORDS.index(word) if word in NUMBER_WORDS else None
