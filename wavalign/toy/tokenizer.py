"""The tiny model's tokenizer: a byte-level BPE in Qwen2's own format (vocab + merges, Qwen2's
pre-tokenizer and decoder), trained on the toy task's sentences until every word is one token,
plus the chat/audio special tokens and the speech tokens `<|audio_0|>`.. as the vocabulary's tail
(as in GLM-4-Voice). Because it *is* a `Qwen2Tokenizer`, it behaves the same whichever way it is
loaded (`AutoTokenizer`, vLLM, the class itself)."""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from wavalign.toy.task import AUDIO_PLACEHOLDER

IM_START = "<|im_start|>"
MAX_POSITIONS = 512  # the tiny model's max_position_embeddings

# Qwen-style chat template: system and user turns in <|im_start|>role\n...<|im_end|>\n blocks.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: list[str], layout_fields: dict[str, Any]) -> Qwen2Tokenizer:
    """Ids: the special tokens, byte-level BPE pieces, then the speech tokens at the end."""
    specials = [IM_START, layout_fields["begin_audio_token"], layout_fields["end_audio_token"], AUDIO_PLACEHOLDER]
    tokenizer = build_text_tokenizer(corpus, layout_fields["eos_token"], layout_fields["pad_token"], specials)
    speech = [layout_fields["speech_token_format"].format(i=i) for i in range(layout_fields["num_speech_tokens"])]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in speech], special_tokens=True)
    return tokenizer


def build_text_tokenizer(corpus: list[str], eos: str, pad: str, specials: list[str] = (IM_START,)) -> Qwen2Tokenizer:
    """A text LM's tokenizer (no speech tokens): the pad, eos and other special tokens, then
    byte-level BPE pieces; Qwen's chat template."""
    specials = list(dict.fromkeys([pad, *specials[:1], eos, *specials[1:]]))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # never reached: merging stops once every word is a single token
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())["model"]  # the trained vocab and merges
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]],
        unk_token=None,
        eos_token=eos,
        pad_token=pad,
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
