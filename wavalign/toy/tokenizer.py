"""The tiny model's tokenizer: a word-level `PreTrainedTokenizerFast` holding the toy words, the
chat/audio special tokens and the speech tokens (as the vocabulary's tail, like GLM-4-Voice)."""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from wavalign.toy.rows import IM_START, NEWLINE
from wavalign.toy.task import AUDIO_PLACEHOLDER

UNK = "<unk>"


def build_tokenizer(words: list[str], layout_fields: dict[str, Any]) -> PreTrainedTokenizerFast:
    """Ids: specials, newline, words, then the speech tokens <|audio_0|>.. at the end."""
    specials = [
        UNK,
        layout_fields["pad_token"],
        IM_START,
        layout_fields["eos_token"],
        layout_fields["begin_audio_token"],
        layout_fields["end_audio_token"],
        AUDIO_PLACEHOLDER,
    ]
    speech = [layout_fields["speech_token_format"].format(i=i) for i in range(layout_fields["num_speech_tokens"])]
    ordered = [*dict.fromkeys(specials), NEWLINE, *words, *speech]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(ordered)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Added tokens are matched before whitespace splitting, so "<|audio_3|><|im_end|>" needs no spaces.
    backend.add_special_tokens([AddedToken(t, normalized=False) for t in (*dict.fromkeys(specials), *speech)])
    backend.add_tokens([AddedToken(NEWLINE, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        eos_token=layout_fields["eos_token"],
        pad_token=layout_fields["pad_token"],
    )
