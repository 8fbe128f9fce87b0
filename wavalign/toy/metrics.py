"""The toy task's two measurable axes, on any response token ids.

- semantic accuracy: the text channel's answer (number word after the last "is") is the right result;
- acoustic word error rate: the speech channel, decoded by the toy codec, against the text channel's
  words (edit distance / number of text words). A response whose speech says what its text says has
  WER 0; speech drift or noise raises it;
- speech-token distribution distance: Jensen-Shannon divergence (base 2, in [0, 1]) between the
  unigram histograms of speech codes in the responses and in the reference answers;
- well-formed: the response ends with eos and its content is exactly the layout's interleaving of
  its own text and speech channels.

Pure module: standard library only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wavalign.interleave import follows_layout, response_channels, until_eos
from wavalign.layout import SpeechLayout
from wavalign.toy.codec import ToyCodec
from wavalign.toy.task import parse_answer


@dataclass(frozen=True)
class ResponseScore:
    correct: bool
    word_error_rate: float
    well_formed: bool
    n_text_tokens: int
    n_speech_tokens: int


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance over words."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def word_error_rate(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Edit distance / len(reference); an empty reference counts as one word."""
    return edit_distance(reference, hypothesis) / max(len(reference), 1)


def js_divergence(p_counts: Counter[int], q_counts: Counter[int]) -> float:
    """Jensen-Shannon divergence (bits) of two histograms; 0 = identical, 1 = disjoint."""
    p_total, q_total = sum(p_counts.values()), sum(q_counts.values())
    if not p_total or not q_total:
        return 1.0
    divergence = 0.0
    for key in set(p_counts) | set(q_counts):
        p, q = p_counts[key] / p_total, q_counts[key] / q_total
        m = (p + q) / 2
        divergence += sum(0.5 * x * math.log2(x / m) for x in (p, q) if x > 0)
    return min(max(divergence, 0.0), 1.0)


class ToyScorer:
    """Scores responses of the toy task; `decode_text` turns text-channel ids into a string (the
    tokenizer's decode with special tokens skipped)."""

    def __init__(self, layout: SpeechLayout, codec: ToyCodec, decode_text: Callable[[list[int]], str]) -> None:
        self.layout, self.codec, self.decode_text = layout, codec, decode_text

    def channels(self, response_ids: Sequence[int]) -> tuple[list[str], list[int]]:
        """(text-channel words, speech codes) of a response, up to its first eos."""
        text_ids, codes, _ = response_channels(response_ids, self.layout)
        return self.decode_text(text_ids).split(), codes

    def score(self, response_ids: Sequence[int], answer: int) -> ResponseScore:
        text_ids, codes, ended = response_channels(response_ids, self.layout)
        content, _ = until_eos(response_ids, self.layout.eos_id)
        words = self.decode_text(text_ids).split()
        return ResponseScore(
            correct=parse_answer(words) == answer,
            word_error_rate=word_error_rate(words, self.codec.decode(codes)),
            well_formed=ended and follows_layout(content, self.layout),
            n_text_tokens=len(text_ids) + int(ended),  # eos counts as text (method §1.2)
            n_speech_tokens=len(content) - len(text_ids),
        )

    def evaluate(
        self, responses: Sequence[Sequence[int]], answers: Sequence[int], references: Sequence[Sequence[int]]
    ) -> dict[str, float]:
        """Means over responses, and the speech-code JS divergence of responses vs references."""
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        scores = [self.score(r, a) for r, a in zip(responses, answers)]
        n = max(len(scores), 1)
        sampled = Counter(c for r in responses for c in self.channels(r)[1])
        reference = Counter(c for r in references for c in self.channels(r)[1])
        return {
            "semantic_accuracy": sum(s.correct for s in scores) / n,
            "acoustic_wer": sum(s.word_error_rate for s in scores) / n,
            "speech_js_divergence": js_divergence(sampled, reference),
            "well_formed_frac": sum(s.well_formed for s in scores) / n,
            "mean_text_tokens": sum(s.n_text_tokens for s in scores) / n,
            "mean_speech_tokens": sum(s.n_speech_tokens for s in scores) / n,
        }
