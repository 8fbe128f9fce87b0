"""Opening a policy's HF directory: its tokenizer and the speech layout resolved against it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from wavalign.config import LayoutConfig
from wavalign.heavy_imports import collector_paused
from wavalign.layout import SpeechLayout, resolve_layout

LIBRARY_PREFIX = "transformers."  # transformers' own classes (a checkpoint's own code loads as transformers_modules.*)


def load_tokenizer_and_layout(
    model_path: str | Path,
    layout_cfg: LayoutConfig,
    trust_remote_code: bool = False,
    tokenizer_class: str | None = None,
):  # -> (tokenizer, SpeechLayout)
    """The directory's tokenizer (its own code too with trust_remote_code: model.trust_remote_code) and
    the layout's ids in it; the model's vocab size comes from config.json. tokenizer_class: what
    tokenizer_class_of() said of the tokenizer AutoTokenizer loaded from this checkpoint (the
    driver's), loaded here the same way without AutoTokenizer."""
    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {model_path} is not an HF model directory (no config.json)")
    tokenizer = load_tokenizer(model_path, trust_remote_code, tokenizer_class)
    vocab_size = json.loads((model_path / "config.json").read_text()).get("vocab_size")
    layout: SpeechLayout = resolve_layout(layout_cfg, tokenizer, model_vocab_size=vocab_size)
    return tokenizer, layout


def load_tokenizer(model_path: Path, trust_remote_code: bool, tokenizer_class: str | None = None):
    """AutoTokenizer's tokenizer for the checkpoint. Given the class AutoTokenizer chose for it (one of
    transformers' own: trust_remote_code plays no part then), that class's from_pretrained, the call
    AutoTokenizer ends in: the same tokenizer, without importing AutoTokenizer's registry, which
    imports torch and every model's configuration (seconds of CPU in each process that only decodes
    ids, e.g. a reward worker). A class this node's transformers lacks (another version than the
    driver's): AutoTokenizer, as without one."""
    chosen = library_tokenizer_class(tokenizer_class) if tokenizer_class is not None else None
    if chosen is None:
        with collector_paused():
            from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return chosen.from_pretrained(model_path)


def library_tokenizer_class(tokenizer_class: str):  # -> type | None
    """The tokenizer class "module:name" of transformers names; None when this transformers lacks it."""
    module, _, name = tokenizer_class.partition(":")
    if not module.startswith(LIBRARY_PREFIX) or not name.isidentifier():
        raise ValueError(f"tokenizer_class: {tokenizer_class!r} is not a class of transformers (module:name)")
    with collector_paused():
        try:
            chosen = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    if not (isinstance(chosen, type) and issubclass(chosen, PreTrainedTokenizerBase)):
        raise ValueError(f"tokenizer_class: {tokenizer_class!r} is not a tokenizer class")
    return chosen


def tokenizer_class_of(tokenizer) -> str | None:
    """ "module:name" of a tokenizer's class when it is transformers' own, for load_tokenizer; None
    for a checkpoint's own tokenizer code (AutoTokenizer loads that code in each process)."""
    cls = type(tokenizer)
    own = cls.__module__.startswith(LIBRARY_PREFIX) and cls.__qualname__ == cls.__name__
    return f"{cls.__module__}:{cls.__name__}" if own else None


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
