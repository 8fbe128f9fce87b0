"""Shared helpers: the tiny layout with hand-picked ids, used by the pure unit tests; and, for the
integration and GPU tests, the embedded default config and its toy assets (built once, cached in
.assets/toy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wavalign.layout import SpeechLayout

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cfg():
    from wavalign.config_file import read_config

    return read_config(ROOT / "pipeline.yaml", [f"toy.assets_dir={ROOT / '.assets' / 'toy'}"])


@pytest.fixture(scope="session")
def toy_assets(cfg):
    from wavalign.toy.assets import ensure_toy_assets

    return ensure_toy_assets(cfg.toy, cfg.model.layout)


# Hand layout for mask tests: ids 0..9 text-ish, BOA 10, EOA 11, eos 12, pad 13, speech codes 20..29.
HAND = dict(speech_start=20, speech_end=30, boa_id=10, eoa_id=11, eos_id=12, pad_id=13)


@pytest.fixture
def hand_layout() -> SpeechLayout:
    return SpeechLayout(**HAND, interleave_ratio=(1, 10, 4, 10))
