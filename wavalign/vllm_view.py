"""A checkpoint as vLLM's model of its architecture sees it: without the modules vLLM lacks.

A spoken-dialogue checkpoint may hold modules beside its LM that vLLM's model of the same
architecture does not have (VITA-Audio's multi-token-prediction heads on a Qwen2 backbone), and
vLLM's weight loader refuses a tensor it has no parameter for. The rollout engines therefore load
a view of the checkpoint: a folder beside it (in this node's cache) whose files link to the
original's, except the safetensors shards that hold such tensors, rewritten without them (and the
shard index, if any, without their names). It is made once per node and checkpoint contents (the
name carries a fingerprint of the files and the prefixes), written whole under a temporary name and
renamed into place, so workers that start together on one node never see half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

INDEX = "model.safetensors.index.json"


def vllm_view(model_dir: str | Path, skip_prefixes: Sequence[str], cache_dir: str | Path) -> Path:
    """The view of model_dir without the tensors whose names start with one of skip_prefixes, in
    cache_dir (made if missing); model_dir itself when it holds none of them."""
    source = Path(model_dir).resolve()
    prefixes = tuple(skip_prefixes)
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"model.extra_modules: {source} holds no .safetensors files to leave them out of")
    skipped = {shard.name: _names(shard, prefixes) for shard in shards}
    if not any(skipped.values()):
        return source
    target = Path(cache_dir) / f"{source.name}-vllm-{_fingerprint(source, prefixes)}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for entry in source.iterdir():
            if entry.name in skipped and skipped[entry.name]:
                _write_without(entry, staging / entry.name, prefixes)
            elif entry.name == INDEX:
                _write_index_without(entry, staging / INDEX, {n for names in skipped.values() for n in names})
            else:
                os.symlink(entry, staging / entry.name)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another worker of this node made it first: theirs is the same
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def unmatched_prefixes(model_dir: str | Path, prefixes: Sequence[str]) -> list[str]:
    """The prefixes that name no tensor of the checkpoint (read from the shards' headers only)."""
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    found = {name for shard in shards for name in _names(shard, tuple(prefixes))}
    return [p for p in prefixes if not any(name.startswith(p) for name in found)]


def _names(shard: Path, prefixes: tuple[str, ...]) -> list[str]:
    from safetensors import safe_open

    with safe_open(shard, framework="pt") as tensors:
        return [name for name in tensors.keys() if name.startswith(prefixes)]


def _write_without(shard: Path, out: Path, prefixes: tuple[str, ...]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(shard, framework="pt") as tensors:
        kept = {name: tensors.get_tensor(name) for name in tensors.keys() if not name.startswith(prefixes)}
        metadata = tensors.metadata()
    save_file(kept, out, metadata=metadata)


def _write_index_without(index: Path, out: Path, dropped: set[str]) -> None:
    content = json.loads(index.read_text())
    content["weight_map"] = {k: v for k, v in content.get("weight_map", {}).items() if k not in dropped}
    out.write_text(json.dumps(content, indent=2))


def _fingerprint(source: Path, prefixes: tuple[str, ...]) -> str:
    """Of the folder's files (name, size, modification time) and the prefixes: a changed
    checkpoint (a new export in the same place) gets a new view."""
    digest = hashlib.sha256(str(source).encode())
    for entry in sorted(source.iterdir()):
        stat = entry.stat()
        digest.update(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps(prefixes).encode())
    return digest.hexdigest()[:12]
