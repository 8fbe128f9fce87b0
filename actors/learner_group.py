"""LearnerGroup: the run's data-parallel LearnerWorkers as Ray workers (one per rank).

Every call goes to all ranks at once (DeepSpeed's collectives need each of them) and has a
deadline; a failure or a hang is an error naming the rank. A learner that dies ends the run: it
continues from the last checkpoint with `--resume`.
"""

from __future__ import annotations

from collections.abc import Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.learner import DpoBatch, LearnerWorker, TrainBatch
from actors.weight_sync import SyncReport, Worker
from actors.worker_pool import WorkerError, first_line
from wavalign.config import PipelineConfig
from wavalign.ports import free_port


class LearnerGroup:
    def __init__(self, cfg: PipelineConfig, model_path: str) -> None:
        lc = cfg.learner
        self.timeout_s, self.world_size = lc.timeout_s, lc.num_workers
        # "sync": a thread of its own for bringing up late rollout workers while a step runs
        remote = ray.remote(
            num_cpus=lc.cpus_per_worker, num_gpus=lc.gpus_per_worker, max_restarts=0, concurrency_groups={"sync": 1}
        )(LearnerWorker)
        port = free_port()  # ranks meet on this node (multi-node learners: the GPU issue)
        self.ranks = [
            remote.options(name=f"learner-{cfg.run.name}-{rank}-{port}").remote(
                model_path, cfg, rank=rank, world_size=self.world_size, master_port=port
            )
            for rank in range(self.world_size)
        ]
        self._call("ready")  # up, or an error naming the rank that failed to start

    def _call(self, method: str, per_rank: Sequence[tuple] | None = None) -> list:
        return self._gather(method, self._submit(method, per_rank))

    def _submit(self, method: str, per_rank: Sequence[tuple] | None = None) -> list:
        return [getattr(w, method).remote(*(per_rank[i] if per_rank else ())) for i, w in enumerate(self.ranks)]

    def _gather(self, method: str, refs: list) -> list:
        results = []
        for rank, ref in enumerate(refs):
            try:
                results.append(ray.get(ref, timeout=self.timeout_s))
            except GetTimeoutError:
                raise WorkerError(
                    f"learner rank {rank}: no answer to {method} within learner.timeout_s={self.timeout_s:g}s"
                ) from None
            except (RayActorError, RayTaskError) as err:
                raise WorkerError(f"learner rank {rank}: {method} failed: {first_line(err)}") from None
        return results

    def train(self, batches: Sequence[TrainBatch | DpoBatch]) -> dict[str, float]:
        """One optimizer step; the ranks' statistics averaged (their shares of the batch are equal)."""
        return self.train_result(self.train_start(batches))

    def train_start(self, batches: Sequence[TrainBatch | DpoBatch]) -> tuple[str, list]:
        """Start the step (WavAlign's, or DPO's for DpoBatches) and return at once (the driver samples
        the next step meanwhile)."""
        method = "dpo_step" if isinstance(batches[0], DpoBatch) else "train_step"
        return method, self._submit(method, [(b,) for b in batches])

    def train_result(self, started: tuple[str, list]) -> dict[str, float]:
        return _mean(self._gather(*started))

    def send_weights(self, version: int, workers: Sequence[Worker]) -> SyncReport:
        """The learners' weights into the rollout workers, straight from learner rank 0 (never through
        the driver); rank 0's report."""
        return self._call("send_weights", [(version, list(workers))] * self.world_size)[0]

    def bring_up(self, worker: Worker) -> ray.ObjectRef:
        """Starts handing the last version sent to a worker that came up since; the ref resolves to
        what the worker said (its pid and version) or raises naming it."""
        return self.ranks[0].bring_up_worker.options(concurrency_group="sync").remote(worker)

    def save_checkpoint(self, directory: str, tag: str) -> None:
        self._call("save_checkpoint", [(directory, tag)] * self.world_size)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        self._call("load_checkpoint", [(directory, tag)] * self.world_size)

    def save_hf(self, directory: str) -> None:
        self._call("save_hf", [(directory,)] * self.world_size)

    def shutdown(self) -> None:
        for worker in self.ranks:
            ray.kill(worker)


def _mean(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for s in stats for k in s)
    return {k: sum(s[k] for s in stats if k in s) / sum(1 for s in stats if k in s) for k in keys}
