"""The toy assets (tokenizer + tiny model as an HF directory, train/eval data files in JSONL and
Parquet, a warm-start report): where they are, and `ensure_toy_assets`, which builds them once
(wavalign/toy/build.py) and caches them.

The cache lives in `toy.assets_dir` and is keyed by a fingerprint of the toy and layout config and
of ASSET_VERSION (wavalign/toy/cache.py; bump it when the generator changes). Building happens in a temporary directory
that is renamed into place, under a file lock, so a crash or a concurrent build never leaves a
half-built cache behind.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wavalign.config import LayoutConfig, ToyConfig
from wavalign.layout import SpeechLayout
from wavalign.toy.cache import fingerprint, foreign_assets_dir
from wavalign.toy.codec import ToyCodec
from wavalign.toy.metrics import ToyScorer
from wavalign.toy.task import vocabulary_words


@dataclass(frozen=True)
class ToyAssets:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def data_file(self, split: str, suffix: str = ".parquet") -> Path:
        return self.root / "data" / f"{split}{suffix}"

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.root / "warm_start.json").read_text())


def toy_codec(toy: ToyConfig, num_codes: int) -> ToyCodec:
    return ToyCodec(vocabulary_words(), num_codes, toy.seed, toy.min_word_tokens, toy.max_word_tokens)


def toy_scorer(layout: SpeechLayout, toy: ToyConfig, tokenizer) -> ToyScorer:
    """The toy metrics for a model's tokenizer (any HF tokenizer with `decode`)."""
    return ToyScorer(
        layout, toy_codec(toy, layout.num_speech_tokens), lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    )


def ensure_toy_assets(
    toy: ToyConfig, layout: LayoutConfig, force: bool = False, log: Callable[[str], None] = print
) -> ToyAssets:
    """The cached assets for this config, built first if missing or stale."""
    root = Path(toy.assets_dir)
    if problem := foreign_assets_dir(toy):
        raise ValueError(problem)
    root.parent.mkdir(parents=True, exist_ok=True)
    key = fingerprint(toy, layout)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder waits, then finds the cache
        stamp = root / "fingerprint"
        if not force and stamp.exists() and stamp.read_text().strip() == key:
            return ToyAssets(root)
        log(f"toy assets: building into {root} (cache key {key}; a few minutes on 2 CPU cores)")
        # (imported here: the model's modules, transformers' and torch's compiler, cost seconds of
        # CPU that a process which only reads the cache would spend for nothing)
        from wavalign.toy.build import build_assets

        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            build_assets(staging, toy, layout, log)
            (staging / "fingerprint").write_text(key + "\n")
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared with Ray workers
            if problem := foreign_assets_dir(toy):  # appeared while we built
                raise ValueError(problem)
            shutil.rmtree(root, ignore_errors=True)  # an outdated cache of ours, or an empty folder
            staging.rename(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"toy assets: ready in {root}")
    return ToyAssets(root)
