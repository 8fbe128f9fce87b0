"""Run checkpoints: everything a resumed run needs to continue exactly as if it had not stopped.

checkpoints/step-NNNNNN/
    learner/      DeepSpeed state of every rank (weights, optimizer, schedule)
    rng.json      the driver's Python, NumPy and torch random states
    driver.json   step, policy version, λ controller state(s), the prompt stream's cursor, ...
checkpoints/latest   the name of the newest complete checkpoint

driver.json is written last and `latest` after it (both atomically), so a checkpoint that a crash
cut short is never picked up. Only the newest `keep` checkpoints are kept.

Resume reads no pickle of the project's: the driver's state is JSON, and `latest` must name a
step-NNNNNN folder of this run. The learner/ files are DeepSpeed's own (torch.save, which pickles),
read by DeepSpeed's loader: resume only run directories you trust, as with any torch checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from wavalign.atomic import write_text_atomic


def _root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, step: int, learners, state: dict, keep: int) -> Path:
    directory = _root(run_dir) / f"step-{step:06d}"
    if directory.exists():
        shutil.rmtree(directory)  # a leftover of a run that died while writing it
    learners.save_checkpoint(str(directory / "learner"), "state")
    write_text_atomic(directory / "rng.json", json.dumps(random_states()))
    write_text_atomic(directory / "driver.json", json.dumps({"step": step, **state}, indent=2))
    write_text_atomic(_root(run_dir) / "latest", directory.name)
    complete = sorted(p for p in _root(run_dir).glob("step-*") if (p / "driver.json").exists())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def random_states() -> dict:
    """The driver's Python, NumPy and torch generator states, as JSON-able values."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }


def set_random_states(states: dict) -> None:
    version, words, gauss = states["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = _root(run_dir) / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not re.fullmatch(r"step-\d{6}", name):  # a pointer is a folder name of this run, nothing else
        raise ValueError(f"{pointer}: expected a checkpoint name like step-000010, got {name[:80]!r}")
    directory = _root(run_dir) / name
    if not (directory / "driver.json").exists():
        raise FileNotFoundError(f"{pointer} names {directory.name}, which is incomplete or missing")
    return directory


def load_checkpoint(directory: Path, learners) -> dict:
    """Restores the learners and the driver's random states; returns driver.json's state."""
    learners.load_checkpoint(str(directory / "learner"), "state")
    set_random_states(json.loads((directory / "rng.json").read_text()))
    return json.loads((directory / "driver.json").read_text())
