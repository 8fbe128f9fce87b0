"""Two reward plug-ins, each with the project's reward signature: a batch of responses in
(rewards.types.ScoredResponse: question, text channel, decoded audio, reference), one score per
response out, on the judge's scale (1 to 5 by default).

- `concise` (a function; its kwargs come with each call): prefers answers no longer than the
  reference, so a policy that pads its answers loses reward.
- `SpeechPace` (a class, built once per reward worker with its kwargs: where a real plug-in loads
  an ASR or a MOS model): the decoded speech's length per text word, near a target pace. It is the
  acoustic check a text-only judge cannot make: speech that stops early or rambles scores low.
"""

from __future__ import annotations

from collections.abc import Sequence


def concise(responses: Sequence, slack_words: int = 1, low: float = 1.0, high: float = 5.0) -> list[float]:
    """`high` for an answer at most `slack_words` words longer than its reference, falling by one
    point per extra word to `low`; `high` when a row has no reference."""
    scores = []
    for response in responses:
        if response.reference is None:
            scores.append(high)
            continue
        extra = len(response.text.split()) - len(response.reference.split()) - slack_words
        scores.append(max(low, high - max(0, extra)))
    return scores


class SpeechPace:
    def __init__(self, seconds_per_word: float, tolerance: float = 0.5, low: float = 1.0, high: float = 5.0) -> None:
        if seconds_per_word <= 0 or not 0 < tolerance < 1:
            raise ValueError(f"seconds_per_word {seconds_per_word} must be > 0 and tolerance {tolerance} in (0, 1)")
        self.seconds_per_word, self.tolerance, self.low, self.high = seconds_per_word, tolerance, low, high

    def __call__(self, responses: Sequence) -> list[float]:
        """`high` at the target pace, `low` at or beyond `tolerance` (relative) away from it, and for
        a response without speech or without words."""
        scores = []
        for response in responses:
            words = len(response.text.split())
            if response.audio is None or words == 0:
                scores.append(self.low)
                continue
            off = abs(response.audio.seconds / words / self.seconds_per_word - 1)
            scores.append(self.high - (self.high - self.low) * min(1.0, off / self.tolerance))
        return scores
