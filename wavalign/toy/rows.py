"""Token ids and data rows of the toy task.

The prompt is the chat format the method uses (method.md §5.2): a system turn, a user turn whose
content is the spoken question (BOA + speech + EOA in place of `<|audio|>`), then the generation
prompt `<|im_start|>assistant\\n`. The reference answer is the assistant content "<text>\\n<|audio|>"
re-interleaved with the layout's ratio, followed by eos.

Pure module: the tokenizer enters as an `encode(text) -> ids` callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wavalign.config import LayoutConfig
from wavalign.interleave import interleave
from wavalign.layout import SpeechLayout
from wavalign.toy.codec import ToyCodec
from wavalign.toy.task import AUDIO_PLACEHOLDER, HEDGE, SYSTEM_PROMPT, Question

Encode = Callable[[str], list[int]]


def chat_prompt(system: str, user: str) -> str:
    """The prompt text up to and including the assistant's generation prompt."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


class ToyEncoder:
    """Builds token ids for toy questions; `encode` is the tokenizer's (adding no special tokens)."""

    def __init__(self, encode: Encode, layout: SpeechLayout, names: LayoutConfig, codec: ToyCodec) -> None:
        self.encode, self.layout, self.names, self.codec = encode, layout, names, codec

    def speech_ids(self, words: list[str]) -> list[int]:
        return [self.layout.speech_start + code for code in self.codec.encode(words)]

    def spoken_text(self, words: list[str]) -> str:
        """The words' speech as token text: BOA <|audio_i|>... EOA."""
        codes = "".join(self.names.speech_token_format.format(i=c) for c in self.codec.encode(words))
        return f"{self.names.begin_audio_token}{codes}{self.names.end_audio_token}"

    def prompt_ids(self, question: Question) -> list[int]:
        return self.encode(chat_prompt(SYSTEM_PROMPT, self.spoken_text(question.question_words())))

    def reference_ids(self, question: Question, stated_result: int | None = None) -> list[int]:
        """Interleaved "<answer text>\\n" + answer speech, then eos."""
        words = question.answer_words(stated_result)
        text = self.encode(" ".join(words) + "\n")
        return [*interleave(text, self.speech_ids(words), self.layout), self.layout.eos_id]

    def row(self, question: Question, row_id: str, stated_result: int | None = None) -> dict[str, Any]:
        """One data row with the WavAlign fields (method §9) and token ids. `stated_result` makes the
        SFT reference state another result (imperfect SFT data); `answer` stays the true one."""
        return {
            "id": row_id,
            "task_type": "s2s",
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": AUDIO_PLACEHOLDER},
            ],
            "question_text": " ".join(question.question_words()),
            "sft_target_text": " ".join(question.answer_words(stated_result)),
            "answer": question.result,
            "prompt_token_ids": self.prompt_ids(question),
            "reference_token_ids": self.reference_ids(question, stated_result),
        }


def toy_corpus(questions: list[Question]) -> list[str]:
    """Every text the toy task's tokenizer must encode as whole words."""
    lines = [SYSTEM_PROMPT, "system", "user", "assistant"]
    for q in questions:
        lines += [" ".join(q.question_words()), " ".join(q.answer_words()) + "\n"]
        lines += [" ".join(q.answer_words(r)) + "\n" for r in (*range(19), HEDGE)]  # every stated result
    return lines
