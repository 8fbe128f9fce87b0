"""RolloutPool: the run's rollout workers — a WorkerPool kept on one policy version.

- `generate` spreads prompt groups over the live workers (a whole group always on one worker) and
  returns every group exactly once, re-sending the groups of a worker that dies (WorkerPool).
- `sync_weights` streams the new weights to every worker in buckets; a worker whose update fails or
  times out is removed (never left serving stale weights) and the error names it.
- A new worker — grown by `resize` or replacing a dead one — receives the current weights before it
  is given any prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.rollout import RolloutRecord, RolloutWorker
from actors.worker_pool import Member, PoolSettings, WorkerError, WorkerPool, first_line
from wavalign.config import PipelineConfig

Prompt = tuple[str, Sequence[int]]  # (prompt id, prompt token ids): one group of G responses


class WeightSyncError(WorkerError):
    pass


class RolloutPool(WorkerPool):
    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: str,
        worker_cls: type = RolloutWorker,
        log: Callable[[str], None] = print,
        on_dispatch: Callable[[Member, int], None] | None = None,
        wait: bool = True,
    ) -> None:
        rc = cfg.rollout
        settings = PoolSettings(
            kind="rollout",
            num_workers=rc.num_workers,
            num_cpus=rc.cpus_per_worker,
            num_gpus=rc.gpus_per_worker,
            start_timeout_s=rc.start_timeout_s,
            call_timeout_s=rc.timeout_s,
            max_redispatch=rc.max_redispatch,
        )
        super().__init__(settings, worker_cls, (model_path, cfg), log, on_dispatch)
        self.cfg = cfg
        self.version = 0
        self._weights: list[tuple[ray.ObjectRef, int]] = []  # buckets of self.version; empty = the checkpoint
        self.start_resize(rc.num_workers)
        if wait:  # (wait=False: the caller starts other workers meanwhile, then calls wait_until_up)
            self.wait_until_up()

    def versions(self) -> dict[str, int]:
        return {m.name: m.info.get("policy_version", 0) for m in self.members}

    def is_current(self, member: Member) -> bool:
        return member.info.get("policy_version", 0) == self.version

    def bring_up(self, member: Member) -> ray.ObjectRef:
        if not self._weights:  # version 0: the checkpoint the worker loads itself
            return member.handle.ready.remote()
        return self._push_weights(member)

    def _push_weights(self, member: Member) -> ray.ObjectRef:
        total = sum(count for _, count in self._weights)
        # Bucket refs as top-level arguments: Ray resolves them into the worker's call.
        return member.handle.update_weights.remote(self.version, total, *(ref for ref, _ in self._weights))

    @staticmethod
    def put_buckets(buckets: Iterable[tuple[bytes, int]]) -> list[tuple[ray.ObjectRef, int]]:
        """Buckets into Ray's object store as uint8 arrays, which workers read zero-copy. A learner
        calls this where the weights are, so they cross to the rollout workers without the driver."""
        return [(ray.put(np.frombuffer(blob, dtype=np.uint8)), count) for blob, count in buckets]

    def sync_weights(self, buckets: Iterable[tuple[bytes | ray.ObjectRef, int]], version: int) -> float:
        """Stream new weights to every worker; returns seconds. Buckets are (safetensors bytes, tensor
        count) pairs (see wavalign.weights), or (object ref, count) pairs from `put_buckets`."""
        if version <= self.version:
            raise ValueError(f"policy version must increase: {version} <= {self.version}")
        started = time.monotonic()
        buckets = list(buckets)
        put = [(blob, count) for blob, count in buckets if not isinstance(blob, ray.ObjectRef)]
        refs = iter(self.put_buckets(put))
        self._weights = [(blob, count) if isinstance(blob, ray.ObjectRef) else next(refs) for blob, count in buckets]
        self.version = version
        # Workers still starting are not waited for: each gets these weights when it comes up.
        finishing = {self._push_weights(m): m for m in self.members if m.state != "starting"}
        timeout = self.cfg.rollout.update_timeout_s
        deadline = time.monotonic() + timeout
        failures = []
        while finishing:
            ready, _ = ray.wait(list(finishing), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for member in finishing.values():
                    failures.append(f"{member.name}: no answer within rollout.update_timeout_s={timeout:g}s")
                    self._remove(member)
                break
            member = finishing.pop(ready[0])
            try:
                member.info = {**member.info, **ray.get(ready[0])}
            except (RayActorError, RayTaskError) as err:
                failures.append(f"{member.name}: {first_line(err)}")
                self._remove(member)
        if failures:
            raise WeightSyncError(f"weight update to version {version} failed; removed " + "; ".join(failures))
        return time.monotonic() - started

    def generate(
        self,
        prompts: Sequence[Prompt],
        seed: int | None = None,
        on_chunk: Callable[[list[RolloutRecord]], None] | None = None,
    ) -> list[RolloutRecord]:
        """G records per prompt, in prompt order, each group exactly once. With a seed, chunk i is
        sampled under seed + i whichever worker serves it (a re-sent chunk too), so a step's
        rollouts do not depend on the pool's history: what exact resume needs. `on_chunk` sees
        each chunk's records as soon as they are in."""
        chunks = self.split(list(prompts), self.cfg.rollout.groups_per_call)
        work = [(chunk, None if seed is None else seed + i) for i, chunk in enumerate(chunks)]
        results = self.map_chunks(
            work,
            lambda handle, item: handle.generate.remote(*item),
            None if on_chunk is None else lambda _, records: on_chunk(records),
        )
        return [record for records in results for record in records]
