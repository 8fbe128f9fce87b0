"""Run checkpoints: everything a resumed run needs to continue exactly as if it had not stopped.

checkpoints/step-NNNNNN/
    learner/      DeepSpeed state of every rank (weights, optimizer, schedule)
    rng.json      the driver's Python, NumPy and torch random states
    driver.json   step, policy version, λ controller state(s), the prompt stream's cursor, ...
checkpoints/latest   the name of the newest complete checkpoint

in the run's storage (wavalign/storage.py: a folder, or a URI such as s3://...), each file complete or
absent there.

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

import numpy as np
import torch

from wavalign.atomic import write_text_atomic
from wavalign.storage import RunStore

_NAME = re.compile(r"step-\d{6}")


def save_checkpoint(store: RunStore, step: int, learners, state: dict, keep: int) -> str:
    """Writes checkpoints/step-NNNNNN (every learner rank its own state, into the run's storage from
    whichever node it is on), then `latest`; prunes to the newest `keep` complete checkpoints, in the
    storage and here. Returns where the checkpoint is."""
    name = f"step-{step:06d}"
    folder = f"checkpoints/{name}"
    store.remove(folder)  # a leftover of a run that died while writing it
    learners.save_checkpoint(store, f"{folder}/learner", "state")
    for file, text in (
        ("rng.json", json.dumps(random_states())),
        ("driver.json", json.dumps({"step": step, **state}, indent=2)),
    ):
        write_text_atomic(store.local / folder / file, text)
        store.publish(f"{folder}/{file}")  # driver.json last: it marks the checkpoint complete
    write_text_atomic(store.local / "checkpoints" / "latest", name)
    store.publish("checkpoints/latest")
    complete = [
        n for n in store.list("checkpoints") if _NAME.fullmatch(n) and store.exists(f"checkpoints/{n}/driver.json")
    ]
    for old in complete[:-keep]:
        store.remove(f"checkpoints/{old}")
    return store.uri(folder)


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


def latest_checkpoint(store: RunStore) -> str | None:
    """The name of the run's newest complete checkpoint (None before the first one)."""
    if not store.exists("checkpoints/latest"):
        return None
    pointer = store.fetch("checkpoints/latest")
    name = pointer.read_text().strip()
    if not _NAME.fullmatch(name):  # a pointer is a folder name of this run, nothing else
        raise ValueError(
            f"{store.uri('checkpoints/latest')}: expected a checkpoint name like step-000010, got {name[:80]!r}"
        )
    if not store.exists(f"checkpoints/{name}/driver.json"):
        raise FileNotFoundError(f"{store.uri('checkpoints/latest')} names {name}, which is incomplete or missing")
    return name


def load_checkpoint(store: RunStore, name: str, learners) -> dict:
    """Restores the learners (each rank fetches its own state) and the driver's random states;
    returns driver.json's state."""
    folder = f"checkpoints/{name}"
    learners.load_checkpoint(store, f"{folder}/learner", "state")
    set_random_states(json.loads(store.fetch(f"{folder}/rng.json").read_text()))
    return json.loads(store.fetch(f"{folder}/driver.json").read_text())
