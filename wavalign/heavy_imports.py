"""Heavy imports (vLLM, DeepSpeed, transformers) without CPython's cyclic garbage collector at work,
and what they built frozen afterwards.

An import of vLLM builds about a million objects. While they pile up the collector runs full passes
over the whole growing heap, nine of them for vLLM alone: a quarter of the import's CPU time
(measured: 2.2-2.7 s of 9-11 s on this project's 2-core machine; DeepSpeed's and transformers'
imports: 1.7 s of 6.7 s). Frozen (gc.freeze), those objects, which live as long as the process, are
skipped by every later collection too: vLLM's own explicit collections while its engine starts
(model loading, then its heap freeze) took 2-3 s more, 0.3-0.5 s after. Rollout, learner and reward
workers start in every run and are replaced when they die, so their start-up time is the pipeline's."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Runs the block (the imports) with the collector off; then, if it imported anything, one
    collection, for the garbage the block left, and the survivors frozen. A block whose modules were
    imported before freezes nothing: objects frozen are never collected as part of a reference cycle,
    so what a long-lived process holds when it passes here again is left to the collector. Nested, or
    with the collector already off, only the outermost block switches it back on."""
    was_on = gc.isenabled()
    modules_before = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            if len(sys.modules) > modules_before:
                gc.collect()
                gc.freeze()
            gc.enable()
