"""The toy asset cache's key and state, without building anything (no torch): what a dry run and
the build share. Pure module: pydantic and the standard library only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from wavalign.config import LayoutConfig, ToyConfig
from wavalign.layout import layout_fields

ASSET_VERSION = 4  # bump when the generator (wavalign/toy) changes what it builds


def fingerprint(toy: ToyConfig, layout: LayoutConfig) -> str:
    """What the assets depend on: the toy settings (not where they are cached) and the layout."""
    settings = toy.model_dump(exclude={"assets_dir"})
    payload = json.dumps({"version": ASSET_VERSION, "toy": settings, "layout": layout_fields(layout)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def foreign_assets_dir(toy: ToyConfig) -> str | None:
    """Why toy.assets_dir cannot hold the cache: it exists and is not one (the build replaces only
    a cache it made, never a folder of the user's), or None."""
    root = Path(toy.assets_dir)
    if root.exists() and not (root / "fingerprint").is_file() and (not root.is_dir() or any(root.iterdir())):
        return (
            f"toy.assets_dir: {root} exists and is not a toy asset cache (no fingerprint file); "
            "it is left alone: choose a new or empty folder"
        )
    return None


def toy_assets_ready(toy: ToyConfig, layout: LayoutConfig) -> bool:
    """Whether the cache holds the assets of this config (no build needed)."""
    stamp = Path(toy.assets_dir) / "fingerprint"
    return stamp.is_file() and stamp.read_text().strip() == fingerprint(toy, layout)
