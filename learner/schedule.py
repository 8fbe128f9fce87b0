"""Learning-rate schedule (method.md §10, §15 item 5): linear warm-up, then cosine (default) or
linear decay to zero, or constant. Pure module: standard library only."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    >>> [round(lr_factor(s, 2, 6), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.25, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be cosine, linear or constant, got {schedule!r}")
