"""LearnerGroup: the run's data-parallel LearnerWorkers as Ray workers (one per rank).

Every call goes to all ranks at once (DeepSpeed's collectives need each of them) and has a
deadline; a failure or a hang is an error naming the rank. A rank that dies (node lost, OOM) or
hangs past the deadline is LearnerLost: the driver rebuilds the group from the run's last
checkpoint (driver/pipeline.py). An exception inside a rank's method is not: a new group would
raise it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.learner import LearnerWorker
from actors.weight_sync import Worker
from actors.worker_pool import WorkerError, first_line, placed, reserve
from wavalign.config import PipelineConfig
from wavalign.messages import DpoBatch, SyncReport, TrainBatch
from wavalign.ports import free_port
from wavalign.storage import RunStore


class LearnerLost(WorkerError):
    """A learner rank is gone or stuck: the group's state (weights, optimizer) went with it."""


@dataclass(frozen=True)
class Pending:
    """A call under way on every rank: the method's name (for errors) and each rank's result ref."""

    method: str
    refs: list[ray.ObjectRef]


class LearnerGroup:
    def __init__(self, cfg: PipelineConfig, model_path: str) -> None:
        lc = cfg.learner
        self.timeout_s, self.world_size = lc.timeout_s, lc.num_workers
        # "sync": a thread of its own for bringing up late rollout workers while a step runs
        remote = ray.remote(
            num_cpus=lc.cpus_per_worker, num_gpus=lc.gpus_per_worker, max_restarts=0, concurrency_groups={"sync": 1}
        )(LearnerWorker)
        port = free_port()  # ranks meet on this node (multi-node learners: the GPU issue)
        # the ranks reserve one placement group together, packed onto as few nodes as offer it
        bundle = lc.placement.bundle(lc.cpus_per_worker, lc.gpus_per_worker)
        self.placement = reserve([bundle] * self.world_size, f"learner-{cfg.run.name}", strategy="PACK")
        self.ranks = [
            remote.options(name=f"learner-{cfg.run.name}-{rank}-{port}", **placed(self.placement, rank)).remote(
                model_path, cfg, rank=rank, world_size=self.world_size, master_port=port
            )
            for rank in range(self.world_size)
        ]
        if not ray.wait([self.placement.ready()], timeout=self.timeout_s)[0]:
            raise WorkerError(
                f"learner: no room for its placement group ({self.world_size} x {bundle}: learner.placement, "
                f"cpus_per_worker, gpus_per_worker) within learner.timeout_s={self.timeout_s:g}s"
            )
        # up, or an error naming the rank that failed to start
        self._gather(Pending("ready", [w.ready.remote() for w in self.ranks]))

    def _gather(self, pending: Pending) -> list:
        """Every rank's result, in rank order; a failure or a missed deadline names the rank and the method."""
        method, results = pending.method, []
        for rank, ref in enumerate(pending.refs):
            try:
                results.append(ray.get(ref, timeout=self.timeout_s))
            except GetTimeoutError:
                raise LearnerLost(
                    f"learner rank {rank}: no answer to {method} within learner.timeout_s={self.timeout_s:g}s"
                ) from None
            except RayActorError as err:
                why = first_line(err).split(". ")[0]  # Ray's own advice follows; the log has it
                raise LearnerLost(f"learner rank {rank}: died during {method} ({why})") from None
            except RayTaskError as err:
                raise WorkerError(f"learner rank {rank}: {method} failed: {first_line(err)}") from None
        return results

    def train(self, batches: Sequence[TrainBatch | DpoBatch]) -> dict[str, float]:
        """One optimizer step; the ranks' statistics averaged (their shares of the batch are equal)."""
        return self.train_result(self.train_start(batches))

    def train_start(self, batches: Sequence[TrainBatch | DpoBatch]) -> Pending:
        """Start the step (WavAlign's, or DPO's for DpoBatches) and return at once (the driver samples
        the next step meanwhile)."""
        if isinstance(batches[0], DpoBatch):
            return Pending("dpo_step", [w.dpo_step.remote(b) for w, b in zip(self.ranks, batches, strict=True)])
        return Pending("train_step", [w.train_step.remote(b) for w, b in zip(self.ranks, batches, strict=True)])

    def train_result(self, pending: Pending) -> dict[str, float]:
        return _mean(self._gather(pending))

    def send_weights(self, version: int, workers: Sequence[Worker]) -> SyncReport:
        """The learners' weights into the rollout workers, straight from learner rank 0 (never through
        the driver); rank 0's report."""
        workers = list(workers)
        return self._gather(Pending("send_weights", [w.send_weights.remote(version, workers) for w in self.ranks]))[0]

    def bring_up(self, worker: Worker) -> ray.ObjectRef:
        """Starts handing the last version sent to a worker that came up since; the ref resolves to
        what the worker said (its pid and version) or raises naming it."""
        return self.ranks[0].bring_up_worker.options(concurrency_group="sync").remote(worker)

    def check_storage(self, store: RunStore) -> None:
        """Every rank reaches the run's folder (an error naming the rank where a path is not shared)."""
        self._gather(Pending("check_storage", [w.check_storage.remote(store) for w in self.ranks]))

    def save_checkpoint(self, store: RunStore, relative: str, tag: str) -> None:
        self._gather(Pending("save_checkpoint", [w.save_checkpoint.remote(store, relative, tag) for w in self.ranks]))

    def load_checkpoint(self, store: RunStore, relative: str, tag: str) -> None:
        self._gather(Pending("load_checkpoint", [w.load_checkpoint.remote(store, relative, tag) for w in self.ranks]))

    def save_hf(self, store: RunStore, relative: str) -> None:
        self._gather(Pending("save_hf", [w.save_hf.remote(store, relative) for w in self.ranks]))

    def shutdown(self) -> None:
        """The ranks go; first their weight region leaves shared memory (a killed process cannot remove
        it; the next learner on this host would, as an orphan)."""
        try:
            ray.get([w.release_weight_region.remote() for w in self.ranks], timeout=30)
        except (GetTimeoutError, RayActorError, RayTaskError):
            pass  # a rank that is gone or stuck: its region is removed as an orphan later
        for worker in self.ranks:
            ray.kill(worker)
        ray.util.remove_placement_group(self.placement)


def _mean(stats: list[dict[str, float]]) -> dict[str, float]:
    """The ranks' step statistics as one: their mean, or for a maximum (`*_max_abs`) their max."""
    keys = dict.fromkeys(k for s in stats for k in s)
    merged = {}
    for key in keys:
        values = [s[key] for s in stats if key in s]
        merged[key] = max(values) if key.endswith("_max_abs") else sum(values) / len(values)
    return merged
