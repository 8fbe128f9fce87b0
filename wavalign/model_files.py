"""Opening a policy's HF directory: its tokenizer and the speech layout resolved against it."""

from __future__ import annotations

import json
from pathlib import Path

from wavalign.config import LayoutConfig
from wavalign.layout import SpeechLayout, resolve_layout


def load_tokenizer_and_layout(model_path: str | Path, layout_cfg: LayoutConfig):  # -> (tokenizer, SpeechLayout)
    """The directory's tokenizer and the layout's ids in it; the model's vocab size comes from config.json."""
    from transformers import AutoTokenizer

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {model_path} is not an HF model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    vocab_size = json.loads((model_path / "config.json").read_text()).get("vocab_size")
    layout: SpeechLayout = resolve_layout(layout_cfg, tokenizer, model_vocab_size=vocab_size)
    return tokenizer, layout
