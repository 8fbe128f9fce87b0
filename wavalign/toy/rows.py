"""Token ids and data rows of the toy task, for a resolved layout and the tiny tokenizer's vocab.

The prompt follows the chat format the method uses (method.md §5.2): a system turn, a user turn whose
content is the spoken question (BOA + speech + EOA in place of `<|audio|>`), then the generation
prompt `<|im_start|>assistant\\n`. The reference answer is the assistant content "<text>\\n<|audio|>"
re-interleaved with the layout's ratio, followed by eos.

Pure module: standard library only.
"""

from __future__ import annotations

from typing import Any

from wavalign.interleave import interleave
from wavalign.layout import SpeechLayout
from wavalign.toy.codec import ToyCodec
from wavalign.toy.task import AUDIO_PLACEHOLDER, SYSTEM_PROMPT, Question

IM_START = "<|im_start|>"
NEWLINE = "\n"


class ToyEncoder:
    """Builds token ids from words; `vocab` is the tokenizer's token -> id map."""

    def __init__(self, vocab: dict[str, int], layout: SpeechLayout, codec: ToyCodec) -> None:
        self.vocab, self.layout, self.codec = vocab, layout, codec

    def word_ids(self, words: list[str]) -> list[int]:
        return [self.vocab[w] for w in words]

    def speech_ids(self, words: list[str]) -> list[int]:
        return [self.layout.speech_start + code for code in self.codec.encode(words)]

    def turn(self, role: str, content: list[int]) -> list[int]:
        return [self.vocab[IM_START], self.vocab[role], self.vocab[NEWLINE], *content, self.layout.eos_id, self.vocab[NEWLINE]]

    def prompt_ids(self, question: Question) -> list[int]:
        spoken = [self.layout.boa_id, *self.speech_ids(question.question_words()), self.layout.eoa_id]
        return [
            *self.turn("system", self.word_ids(SYSTEM_PROMPT.split())),
            *self.turn("user", spoken),
            self.vocab[IM_START],
            self.vocab["assistant"],
            self.vocab[NEWLINE],
        ]

    def reference_ids(self, question: Question, stated_result: int | None = None) -> list[int]:
        """Interleaved "<answer text>\\n" + answer speech, then eos."""
        words = question.answer_words(stated_result)
        text = [*self.word_ids(words), self.vocab[NEWLINE]]
        return [*interleave(text, self.speech_ids(words), self.layout), self.layout.eos_id]

    def row(self, question: Question, row_id: str) -> dict[str, Any]:
        """One data row with the WavAlign fields (method §9) and token ids."""
        return {
            "id": row_id,
            "task_type": "s2s",
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": AUDIO_PLACEHOLDER},
            ],
            "question_text": " ".join(question.question_words()),
            "sft_target_text": " ".join(question.answer_words()),
            "answer": question.result,
            "prompt_token_ids": self.prompt_ids(question),
            "reference_token_ids": self.reference_ids(question),
        }

