"""Run checkpoints: everything a resumed run needs to continue exactly as if it had not stopped.

checkpoints/step-NNNNNN/
    learner/      DeepSpeed state of every rank (weights, optimizer, schedule)
    rng.pkl       the driver's Python, NumPy and torch random states
    driver.json   step, policy version, λ controller state(s), the prompt stream's cursor, ...
checkpoints/latest   the name of the newest complete checkpoint

driver.json is written last and `latest` after it (both atomically), so a checkpoint that a crash
cut short is never picked up. Only the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from wavalign.atomic import atomic_path, write_text_atomic


def _root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, step: int, learners, state: dict, keep: int) -> Path:
    directory = _root(run_dir) / f"step-{step:06d}"
    if directory.exists():
        shutil.rmtree(directory)  # a leftover of a run that died while writing it
    learners.save_checkpoint(str(directory / "learner"), "state")
    with atomic_path(directory / "rng.pkl") as tmp:
        tmp.write_bytes(pickle.dumps({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}))
    write_text_atomic(directory / "driver.json", json.dumps({"step": step, **state}, indent=2))
    write_text_atomic(_root(run_dir) / "latest", directory.name)
    complete = sorted(p for p in _root(run_dir).glob("step-*") if (p / "driver.json").exists())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = _root(run_dir) / "latest"
    if not pointer.exists():
        return None
    directory = _root(run_dir) / pointer.read_text().strip()
    if not (directory / "driver.json").exists():
        raise FileNotFoundError(f"{pointer} names {directory.name}, which is incomplete or missing")
    return directory


def load_checkpoint(directory: Path, learners) -> dict:
    """Restores the learners and the driver's random states; returns driver.json's state."""
    learners.load_checkpoint(str(directory / "learner"), "state")
    rng = pickle.loads((directory / "rng.pkl").read_bytes())
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((directory / "driver.json").read_text())
