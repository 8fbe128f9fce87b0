"""RewardPool: `reward.num_workers` RewardWorkers (a WorkerPool); a batch is split over them and
every response comes back scored exactly once, even if a worker dies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import ray

from actors.reward import RewardRequest, RewardResult, RewardWorker
from actors.worker_pool import Member, PoolSettings, WorkerPool
from wavalign.config import PipelineConfig


class RewardPool(WorkerPool):
    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: str,
        log: Callable[[str], None] = print,
        on_dispatch: Callable[[Member, int], None] | None = None,
    ) -> None:
        rc = cfg.reward
        settings = PoolSettings(
            kind="reward",
            num_workers=rc.num_workers,
            num_cpus=rc.cpus_per_worker,
            num_gpus=0,
            start_timeout_s=cfg.rollout.start_timeout_s,
            call_timeout_s=rc.timeout_s,
            max_redispatch=cfg.rollout.max_redispatch,
        )
        super().__init__(settings, RewardWorker, (model_path, cfg), log, on_dispatch)
        self.resize(rc.num_workers)

    def score(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        """One result per request, in request order."""
        results = self.map_chunks(self.split(list(requests)), lambda handle, chunk: handle.score.remote(chunk))
        return [result for chunk in results for result in chunk]

    def counters(self) -> dict[str, int]:
        """Judge counters summed over the workers."""
        total: Counter[str] = Counter()
        for counts in ray.get([m.handle.counters.remote() for m in self.members], timeout=self.settings.call_timeout_s):
            total.update(counts)
        return dict(total)
