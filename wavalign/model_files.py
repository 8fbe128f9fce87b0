"""Opening a policy's HF directory: its tokenizer and the speech layout resolved against it."""

from __future__ import annotations

import json
from pathlib import Path

from wavalign.config import LayoutConfig
from wavalign.heavy_imports import collector_paused
from wavalign.layout import SpeechLayout, resolve_layout


def load_tokenizer_and_layout(
    model_path: str | Path, layout_cfg: LayoutConfig, trust_remote_code: bool = False
):  # -> (tokenizer, SpeechLayout)
    """The directory's tokenizer (its own code too with trust_remote_code: model.trust_remote_code) and
    the layout's ids in it; the model's vocab size comes from config.json."""
    with collector_paused():
        from transformers import AutoTokenizer

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {model_path} is not an HF model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    vocab_size = json.loads((model_path / "config.json").read_text()).get("vocab_size")
    layout: SpeechLayout = resolve_layout(layout_cfg, tokenizer, model_vocab_size=vocab_size)
    return tokenizer, layout


def check_model_code(model_path: str | Path, trust_remote_code: bool) -> None:
    """That transformers can build the checkpoint's config as model.trust_remote_code allows: a
    checkpoint whose architecture needs its own code (auto_map) is an error naming the setting
    when that is off (the learner would fail as it starts, on every node)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"model.path: {model_path} ships its own modeling code (config.json auto_map) that its architecture "
            "needs: set model.trust_remote_code: true if you trust that code"
        ) from None
