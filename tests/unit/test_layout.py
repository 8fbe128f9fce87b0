"""Resolving layout token names against a tokenizer; errors name the missing token."""

import pytest

from wavalign.config import LayoutConfig
from wavalign.layout import LayoutError, resolve_layout


class VocabTokenizer:
    """A tokenizer stand-in exposing only what layout resolution reads (a vocab)."""

    def __init__(self, tokens):
        self.vocab = {t: i for i, t in enumerate(tokens)}

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def preset_tokenizer(cfg: LayoutConfig, drop=(), extra_after=()):
    specials = [cfg.pad_token, "<|im_start|>", cfg.eos_token, cfg.begin_audio_token, cfg.end_audio_token, "hello"]
    speech = [cfg.speech_token_format.format(i=i) for i in range(cfg.num_speech_tokens)]
    return VocabTokenizer([t for t in [*specials, *speech, *extra_after] if t not in drop])


@pytest.mark.parametrize(
    "preset,count,ratio",
    [("tiny", 256, (2, 8, 3, 8)), ("glm4voice", 16384, (13, 28)), ("vita-audio", 16384, (1, 10, 4, 10))],
)
def test_presets_resolve(preset, count, ratio):
    cfg = LayoutConfig(preset=preset)
    layout = resolve_layout(cfg, preset_tokenizer(cfg))
    assert (layout.speech_start, layout.speech_end) == (6, 6 + count)
    assert (layout.pad_id, layout.eos_id, layout.boa_id, layout.eoa_id) == (0, 2, 3, 4)
    assert layout.interleave_ratio == ratio


def test_speech_range_extends_to_model_vocab_when_speech_is_the_tail():
    cfg = LayoutConfig(preset="tiny")
    assert resolve_layout(cfg, preset_tokenizer(cfg), model_vocab_size=300).speech_end == 300  # method: id < V
    with_tail = preset_tokenizer(cfg, extra_after=["<|tail|>"])
    assert resolve_layout(cfg, with_tail, model_vocab_size=300).speech_end == 6 + 256


@pytest.mark.parametrize(
    "missing,field",
    [("<|begin_of_audio|>", "begin_audio_token"), ("<|im_end|>", "eos_token"), ("<|audio_7|>", "speech_token_format")],
)
def test_missing_token_is_named(missing, field):
    cfg = LayoutConfig(preset="tiny")
    with pytest.raises(LayoutError, match=rf"model\.layout\.{field}.*{missing.replace('|', '[|]')}"):
        resolve_layout(cfg, preset_tokenizer(cfg, drop=[missing]))


def test_explicit_fields_override_the_preset():
    cfg = LayoutConfig(preset="vita-audio", num_speech_tokens=8, interleave_ratio=[3, 5])
    assert cfg.speech_token_format == "<|audio_{i}|>"  # still from the preset
    layout = resolve_layout(cfg, preset_tokenizer(cfg))
    assert layout.num_speech_tokens == 8 and layout.interleave_ratio == (3, 5)
