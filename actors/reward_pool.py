"""RewardPool: `reward.num_workers` RewardWorkers (a WorkerPool); a batch is split over them and
every response comes back scored exactly once, even if a worker dies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.reward import RewardWorker
from actors.worker_pool import Member, PoolSettings, WorkerError, WorkerPool, first_line
from wavalign.config import PipelineConfig
from wavalign.messages import RewardRequest, RewardResult


class RewardPool(WorkerPool):
    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: str,
        log: Callable[[str], None] = print,
        on_dispatch: Callable[[Member, int], None] | None = None,
        wait: bool = True,
        tokenizer_class: str | None = None,
    ) -> None:
        """tokenizer_class: the class of the driver's tokenizer of the policy, which each worker then
        loads without AutoTokenizer (wavalign/model_files.py: load_tokenizer)."""
        rc = cfg.reward
        settings = PoolSettings(
            kind="reward",
            num_workers=rc.num_workers,
            num_cpus=rc.cpus_per_worker,
            num_gpus=0,
            start_timeout_s=cfg.rollout.start_timeout_s,
            call_timeout_s=rc.timeout_s,
            max_redispatch=cfg.rollout.max_redispatch,
            bundle=tuple(rc.placement.bundle(rc.cpus_per_worker, 0).items()),
        )
        super().__init__(settings, RewardWorker, (model_path, cfg, tokenizer_class), log, on_dispatch)
        self._last_counts: dict[str, dict[str, int]] = {}  # each live worker's last counters
        self._retired: Counter[str] = Counter()  # the last counters of workers no longer in the pool
        self.start_resize(rc.num_workers)
        if wait:  # (wait=False: the caller starts other workers meanwhile, then calls wait_until_up)
            self.wait_until_up()

    def score(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        """One result per request, in request order."""
        results = self.map_chunks(self.split(list(requests)), lambda handle, chunk: handle.score.remote(chunk))
        return [result for chunk in results for result in chunk]

    def counters(self) -> dict[str, int]:
        """Judge counters summed over every worker the run has had: a worker that died or was
        removed counts with its last report. A worker found dead here is removed (the next batch
        starts its replacement); one that does not answer in time is an error naming it."""
        total: Counter[str] = Counter(self._retired)
        asked = {m.handle.counters.remote(): m for m in self.members}
        for ref, member in asked.items():
            try:
                counts = ray.get(ref, timeout=self.settings.call_timeout_s)
            except GetTimeoutError:
                raise WorkerError(
                    f"{member.name}: no answer to counters after {self.settings.call_timeout_s:g}s"
                ) from None
            except RayActorError as err:
                self.log(f"reward pool: {member.name} died ({first_line(err)}); it is replaced by the next batch")
                total.update(self._last_counts.get(member.name, {}))  # its last report (retired by _remove)
                self._remove(member)
                continue
            self._last_counts[member.name] = counts
            total.update(counts)
        return dict(total)

    def _remove(self, member: Member) -> None:
        self._retired.update(self._last_counts.pop(member.name, {}))
        super()._remove(member)
