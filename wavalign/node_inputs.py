"""What every worker reads — the policy's HF directory — wherever it runs.

The driver hands the workers a location (driver/inputs.py: `model_for_workers`): a folder path, read
as it is (on several nodes, one that every node mounts at the same path), or a URI that pyarrow.fs
opens (`s3://`, `gs://`, `hdfs://`, `file://`: as run storage takes, wavalign/storage.py), copied
once per node into a local cache and read there. The copy is made under a lock (a node's rollout,
reward and learner workers start at once), is complete or absent, and is fetched again when the
stored files' names or sizes change.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from wavalign.storage import RunStore, is_uri

_LISTING = ".wavalign-listing.json"  # the stored files' names and sizes, written when the copy is complete


def check_model_dir(location: str, key: str = "model.path") -> dict[str, int]:
    """That `location` holds an HF directory this node can read (a URI: its listing, nothing fetched);
    an error naming `key`, the location and this node otherwise. Returns a URI's stored files and
    their sizes (empty for a folder)."""
    if not is_uri(location):
        if not (Path(location) / "config.json").is_file():
            raise FileNotFoundError(
                f"{key}: {location} is not an HF model directory (no config.json) on node {socket.gethostname()}; "
                "on several nodes give a folder every node mounts at the same path, or a URI (s3://...)"
            )
        return {}
    listing = RunStore(location).sizes()
    if "config.json" not in listing:
        raise FileNotFoundError(f"{key}: {location} is not an HF model directory (no config.json there)")
    return listing


def policy_directory(cfg) -> Path:
    """The policy checkpoint on this node: model.path (a URI fetched here first), or the project's
    tiny model when it is null (the toy assets built here first when missing)."""
    if cfg.model.path is not None:
        return local_model_dir(cfg.model.path)
    from wavalign.toy.assets import ensure_toy_assets

    return ensure_toy_assets(cfg.toy, cfg.model.layout).model_dir.resolve()


def local_model_dir(location: str, key: str = "model.path") -> Path:
    """The HF directory at `location` as a folder on this node (check_model_dir's errors)."""
    listing = check_model_dir(location, key)
    if not is_uri(location):
        return Path(location)
    store = RunStore(location, "input")
    copy, marker = store.local, store.local / _LISTING
    copy.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{copy}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers of this node wait for the one copy
        if not (marker.is_file() and json.loads(marker.read_text()) == listing):
            shutil.rmtree(copy, ignore_errors=True)
            store.fetch("")
            marker.write_text(json.dumps(listing))
    return copy


def stage_directory(source: Path, store: RunStore, relative: str) -> str:
    """A copy of the local folder `source` in the run's storage at `relative` (replacing what was
    there); returns its location for the workers. Used for inputs built on the driver's node (the
    toy model), which the other nodes cannot see."""
    target = store.local / relative
    if target.resolve() != source.resolve():
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    store.publish(relative)
    store.drop_local(relative)
    return store.uri(relative)
