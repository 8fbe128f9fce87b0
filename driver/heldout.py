"""The run's held-out figures (toy data): the eval split measured on the starting policy, before step
1, and on the final one, each with its standard error over the prompts, and the paired gain — what
a run prints when it ends, so that whether training helped on prompts it never trained on is read
off the console, not guessed from one noisy curve.

Per prompt p, a_p = the share of its samples with the right result; the split's accuracy is the mean
of a_p, its standard error s(a) / sqrt(n); the gain is the mean of the per-prompt differences
(final - start), its standard error s(d) / sqrt(n) (paired: the question-to-question spread cancels).
Pure module: the standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

HELDOUT_START = "eval_start.json"  # a run's file of its starting policy's held-out figures


@dataclass(frozen=True)
class HeldOut:
    step: int  # 0: the starting policy
    semantic_accuracy: float
    acoustic_wer: float
    per_prompt: dict[str, float]  # row id -> share of its samples with the right result
    samples_per_prompt: int

    @property
    def semantic_accuracy_se(self) -> float:
        return standard_error(list(self.per_prompt.values()))

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HeldOut:
        """ValueError (one line) for text that is not a HeldOut's JSON."""
        try:
            fields = json.loads(text)
            held = cls(**fields)
            per_prompt = {str(k): float(v) for k, v in held.per_prompt.items()}
            return cls(
                int(held.step),
                float(held.semantic_accuracy),
                float(held.acoustic_wer),
                per_prompt,
                int(held.samples_per_prompt),
            )
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"not the held-out figures of a run ({' '.join(str(err).split())})") from None


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean (sample standard deviation / sqrt(n)); NaN below 2 values."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired_gain(start: HeldOut, end: HeldOut) -> tuple[float, float]:
    """(mean, standard error) of end - start over the prompts both measured."""
    shared = [p for p in end.per_prompt if p in start.per_prompt]
    differences = [end.per_prompt[p] - start.per_prompt[p] for p in shared]
    return (sum(differences) / len(differences) if differences else math.nan), standard_error(differences)


def summary_line(start: HeldOut | None, end: HeldOut) -> str:
    """One line: the held-out semantic accuracy and acoustic WER at the start and at the end."""
    size = f"{len(end.per_prompt)} prompts x {end.samples_per_prompt} samples"
    final = f"{end.semantic_accuracy:.3f} ± {end.semantic_accuracy_se:.3f} after step {end.step}"
    if start is None:  # a run resumed from one that did not measure its start
        return f"held-out ({size}): semantic accuracy {final}; acoustic WER {end.acoustic_wer:.3f}"
    gain, gain_se = paired_gain(start, end)
    return (
        f"held-out ({size}): semantic accuracy {start.semantic_accuracy:.3f} ± {start.semantic_accuracy_se:.3f} "
        f"at the start -> {final} (paired gain {gain:+.3f} ± {gain_se:.3f}); "
        f"acoustic WER {start.acoustic_wer:.3f} -> {end.acoustic_wer:.3f}"
    )
