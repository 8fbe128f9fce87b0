"""RolloutPool: the run's rollout workers — a WorkerPool kept on one policy version.

- `generate` spreads prompt groups over the live workers (a whole group always on one worker) and
  returns every group exactly once, re-sending the groups of a worker that dies (WorkerPool).
- `sync_weights` has the learner send the new weights to every worker that is up (the driver only
  names the workers and the version); a worker whose update fails or times out is removed (never left
  serving stale weights) and the error names it.
- A new worker — grown by `resize` or replacing a dead one — first starts its engine, then receives
  the last version sent from the learner (`bring_up_weights`) before it is given any prompt.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ray

from actors.rollout import RolloutWorker
from actors.weight_sync import WeightSyncError, Worker, call_workers, named_failures
from actors.worker_pool import Member, PoolSettings, WorkerPool
from wavalign.config import PipelineConfig
from wavalign.messages import RolloutRecord, SyncReport

Prompt = tuple[str, Sequence[int]]  # (prompt id, prompt token ids): one group of G responses
Send = Callable[[int, Sequence[Worker]], SyncReport]  # (version, workers) -> the learner's report


def huge_page_malloc(tunables: str) -> str:
    """glibc's malloc tunables for a rollout worker: `tunables` (the operator's) with transparent huge
    pages for large allocations. vLLM's reload allocates every layer afresh at each weight sync; with
    huge pages the 517 MiB model's reload takes ~0.4 s instead of ~0.62 s on a 2-core machine (fewer
    page faults); generation is unchanged. An explicit glibc.malloc.hugetlb of the operator's stays.

    >>> huge_page_malloc("")
    'glibc.malloc.hugetlb=1'
    >>> huge_page_malloc("glibc.malloc.arena_max=2")
    'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
    >>> huge_page_malloc("glibc.malloc.hugetlb=0")
    'glibc.malloc.hugetlb=0'
    """
    if "glibc.malloc.hugetlb=" in tunables:
        return tunables
    return ":".join(t for t in (tunables, "glibc.malloc.hugetlb=1") if t)


class RolloutPool(WorkerPool):
    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: str,
        worker_cls: type = RolloutWorker,
        log: Callable[[str], None] = print,
        on_dispatch: Callable[[Member, int], None] | None = None,
        wait: bool = True,
        bring_up_weights: Callable[[Worker], ray.ObjectRef] | None = None,
    ) -> None:
        """bring_up_weights(worker): a ref that resolves once a worker that came up after the first
        sync holds the last version sent (LearnerGroup.bring_up)."""
        rc = cfg.rollout
        settings = PoolSettings(
            kind="rollout",
            num_workers=rc.num_workers,
            num_cpus=rc.cpus_per_worker,
            num_gpus=rc.gpus_per_worker,
            start_timeout_s=rc.start_timeout_s,
            call_timeout_s=rc.timeout_s,
            max_redispatch=rc.max_redispatch,
            env_vars=(("GLIBC_TUNABLES", huge_page_malloc(os.environ.get("GLIBC_TUNABLES", ""))),),
            bundle=tuple(rc.placement.bundle(rc.cpus_per_worker, rc.gpus_per_worker).items()),
        )
        super().__init__(settings, worker_cls, (model_path, cfg), log, on_dispatch)
        self.cfg = cfg
        self.version = 0
        self.bring_up_weights = bring_up_weights
        self.start_resize(rc.num_workers)
        if wait:  # (wait=False: the caller starts other workers meanwhile, then calls wait_until_up)
            self.wait_until_up()

    def versions(self) -> dict[str, int]:
        return {m.name: m.info.get("policy_version", 0) for m in self.members}

    def is_current(self, member: Member) -> bool:
        return member.info.get("policy_version", 0) == self.version

    def bring_up(self, member: Member) -> ray.ObjectRef:
        if self.version == 0 or not member.info:  # its engine first (version 0: the checkpoint it loads)
            return member.handle.ready.remote()
        if self.bring_up_weights is None:
            raise WeightSyncError(f"{member.name}: the pool has no way to bring a worker up to version {self.version}")
        return self.bring_up_weights((member.name, member.handle))

    def up_workers(self) -> list[Worker]:
        return [(m.name, m.handle) for m in self.members if m.state != "starting"]

    def sync_weights(self, version: int, send: Send, rewind: bool = False) -> SyncReport:
        """The new weights into every worker that is up, sent by the learner; workers still starting
        get this version when they are up. A worker that failed is removed and named in the error.
        rewind: a learner rebuilt from a checkpoint sends that checkpoint's (older) version."""
        if version <= self.version and not rewind:
            raise ValueError(f"policy version must increase: {version} <= {self.version}")
        self.version = version
        sent_to = self.up_workers()
        report = send(version, sent_to)
        failed = {
            name: report.failed.get(name, "did not finish the update")
            for name, _ in sent_to
            if name not in report.finished
        }
        for member in list(self.members):
            if member.name in report.finished:
                member.info = {**member.info, **report.finished[member.name]}
            elif member.name in failed:
                self._remove(member)
        if failed:
            raise WeightSyncError(f"weight update to version {version} failed; removed {named_failures(failed)}")
        return report

    def sleep(self) -> None:
        """Colocated (rollout.colocate, GPUs): every worker's vLLM frees the GPU for the learner step."""
        self._on_all("sleep", lambda name, h: h.sleep.remote())

    def wake_up(self, tags: list[str]) -> None:
        """Colocated: "weights" before a sync (the transfer writes into them), "kv_cache" after it."""
        self._on_all(f"wake_up {tags}", lambda name, h: h.wake_up.remote(tags))

    def _on_all(self, what: str, submit) -> None:
        _, failures = call_workers(self.up_workers(), what, submit, self.cfg.rollout.update_timeout_s)
        if failures:
            raise WeightSyncError(named_failures(failures))

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
