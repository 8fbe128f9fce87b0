"""WorkerPool's deadlines and re-dispatch limit on real Ray workers (the session cluster). The
worker here is a small stand-in whose start-up, work or weight update never ends, or whose process
dies on every chunk: what is tested is the pools' own bookkeeping, which is the same for rollout and
reward workers (rollout.start_timeout_s / timeout_s / max_redispatch / update_timeout_s, reward.timeout_s)."""

from __future__ import annotations

import os
import threading

import pytest

from actors.worker_pool import PoolSettings, WorkerError, WorkerPool


class StandIn:
    """ready() and work() block forever when told to (a hung engine); work() can kill the process."""

    def __init__(self, hang_ready: bool = False, hang_work: bool = False, die_on_work: bool = False) -> None:
        self.hang_ready, self.hang_work, self.die_on_work = hang_ready, hang_work, die_on_work

    def ready(self) -> dict:
        if self.hang_ready:
            threading.Event().wait()
        return {"pid": os.getpid()}

    def work(self, chunk: list[int]) -> list[int]:
        if self.die_on_work:
            os._exit(9)
        if self.hang_work:
            threading.Event().wait()
        return [x * 2 for x in chunk]


class DiesStarting(StandIn):
    """Dies in ready() (kill -9, as a vLLM start that crashes) for the first `deaths` workers made
    with the same counter file; the ones after come up."""

    def __init__(self, counter: str, deaths: int) -> None:
        super().__init__()
        self.counter, self.deaths = counter, deaths

    def ready(self) -> dict:
        with open(self.counter, "a") as tally:  # one byte per start, across processes
            tally.write("x")
        if os.path.getsize(self.counter) <= self.deaths:
            os._exit(9)
        return super().ready()


class HangingUpdate(StandIn):
    """A rollout worker (RolloutPool's constructor arguments) whose weight update never finishes."""

    def __init__(self, model_path: str, cfg) -> None:
        super().__init__()

    def node_id(self) -> str:
        return "standin-node"

    def weight_transfer_init(self, init_info: dict) -> None:
        pass

    def weight_transfer_start(self) -> None:
        pass

    def weight_transfer_update(self, update_info: dict) -> dict:
        threading.Event().wait()
        return {}


class RefusesToConnect(HangingUpdate):
    """A rollout worker whose transfer engine cannot be set up (it never receives the weights)."""

    def weight_transfer_init(self, init_info: dict) -> None:
        raise RuntimeError("no transfer engine here")


def settings(**overrides) -> PoolSettings:
    base = dict(
        kind="standin", num_workers=1, num_cpus=0.1, num_gpus=0, start_timeout_s=60, call_timeout_s=60, max_redispatch=2
    )
    return PoolSettings(**{**base, **overrides})


def test_work_comes_back_in_order(ray_cluster):
    pool = WorkerPool(settings(num_workers=2), StandIn, (), log=lambda line: None)
    try:
        pool.resize(2)
        chunks = pool.split(list(range(10)))
        assert len(chunks) == 2
        assert pool.map_chunks(chunks, lambda handle, chunk: handle.work.remote(chunk)) == [
            [0, 2, 4, 6, 8],
            [10, 12, 14, 16, 18],
        ]
    finally:
        pool.shutdown()


def test_a_worker_not_up_by_start_timeout_is_an_error_naming_it(ray_cluster):
    pool = WorkerPool(settings(start_timeout_s=2), StandIn, (True,), log=lambda line: None)
    try:
        with pytest.raises(WorkerError, match=r"standin-\w+-0: not up after start_timeout_s=2s"):
            pool.resize(1)
    finally:
        pool.shutdown()


def test_a_worker_that_no_node_can_hold_is_said_at_once_then_an_error_naming_what_it_needs(ray_cluster):
    """Each worker reserves a placement group of its own (its CPUs and the role's placement
    resources); a bundle that no node offers is a warning at once and, at the start deadline, an
    error naming the worker and the bundle. The same pool on a resource the cluster has comes up."""
    lines: list[str] = []
    bundle = (("CPU", 0.1), ("nowhere_node", 1.0))
    pool = WorkerPool(settings(start_timeout_s=2, bundle=bundle), StandIn, (), log=lines.append)
    try:
        with pytest.raises(
            WorkerError,
            match=r"standin-\w+-0: not up after start_timeout_s=2s \(each needs "
            r"\{'CPU': 0\.1, 'nowhere_node': 1\.0\} on one node\)",
        ):
            pool.resize(1)
        assert (
            lines[0].startswith("warning: standin-")
            and "no node of the cluster offers {'nowhere_node': 1.0}" in lines[0]
        )
    finally:
        pool.shutdown()
    placed = WorkerPool(settings(bundle=(("CPU", 0.1),)), StandIn, (), log=lambda line: None)
    try:
        placed.resize(1)
        assert placed.members[0].placement is not None and placed.map_chunks([[1]], lambda h, c: h.work.remote(c)) == [
            [2]
        ]
    finally:
        placed.shutdown()


def test_work_past_its_deadline_is_an_error_naming_the_worker(ray_cluster):
    pool = WorkerPool(settings(call_timeout_s=2), StandIn, (False, True), log=lambda line: None)
    try:
        pool.resize(1)
        with pytest.raises(WorkerError, match=r"standin-\w+-0: no answer to its work after [23]s"):
            pool.map_chunks([[1]], lambda handle, chunk: handle.work.remote(chunk))
    finally:
        pool.shutdown()


def test_a_chunk_that_kills_every_worker_is_given_up_after_max_redispatch(ray_cluster):
    lines: list[str] = []
    pool = WorkerPool(settings(max_redispatch=1), StandIn, (False, False, True), log=lines.append)
    try:
        pool.resize(1)
        with pytest.raises(WorkerError, match=r"chunk 0 lost 2 times \(max_redispatch\)"):
            pool.map_chunks([[1]], lambda handle, chunk: handle.work.remote(chunk))
        assert pool.replacements == 2
        assert sum("died" in line and "re-sending chunk 0" in line for line in lines) == 2
    finally:
        pool.shutdown()


def test_a_weight_update_past_its_deadline_removes_the_worker_and_names_it(ray_cluster, cfg, toy_assets):
    import torch

    from actors.pool import RolloutPool
    from actors.weight_sync import LearnerSync, WeightSyncError

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.rollout = run_cfg.rollout.model_copy(update={"update_timeout_s": 2, "cpus_per_worker": 0.1})
    pool = RolloutPool(run_cfg, str(toy_assets.model_dir), worker_cls=HangingUpdate, log=lambda line: None)
    learner_side = LearnerSync(
        "object_store", 0, lambda: iter([("w", torch.zeros(4))]), chunk_bytes=1 << 20, timeout_s=2
    )
    try:
        (name,) = pool.states()
        with pytest.raises(
            WeightSyncError,
            match=rf"version 1 failed; removed {name}: no answer to update_weights within "
            r"rollout.update_timeout_s=2s",
        ):
            pool.sync_weights(1, learner_side.sync)
        assert pool.members == []  # never left serving the old weights
    finally:
        pool.shutdown()


def test_a_worker_that_cannot_connect_for_the_weights_is_removed_not_left_stale(ray_cluster, cfg, toy_assets):
    import torch

    from actors.pool import RolloutPool
    from actors.weight_sync import LearnerSync, WeightSyncError

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.rollout = run_cfg.rollout.model_copy(update={"cpus_per_worker": 0.1})
    pool = RolloutPool(run_cfg, str(toy_assets.model_dir), worker_cls=RefusesToConnect, log=lambda line: None)
    learner_side = LearnerSync(
        "object_store", 0, lambda: iter([("w", torch.zeros(4))]), chunk_bytes=1 << 20, timeout_s=30
    )
    try:
        (name,) = pool.states()
        with pytest.raises(
            WeightSyncError,
            match=rf"version 1 failed; removed {name}: init_weight_transfer failed: .*no transfer engine",
        ):
            pool.sync_weights(1, learner_side.sync)
        assert pool.members == []
    finally:
        pool.shutdown()


def test_a_worker_that_dies_starting_is_replaced_within_max_redispatch(ray_cluster, tmp_path):
    lines = []
    pool = WorkerPool(settings(max_redispatch=2), DiesStarting, (str(tmp_path / "starts"), 2), log=lines.append)
    try:
        pool.resize(1)  # two starts die, the third comes up
        assert [m.name.rsplit("-", 1)[1] for m in pool.members] == ["2"] and pool.failed_starts == 0
        assert pool.map_chunks([[1, 2]], lambda handle, chunk: handle.work.remote(chunk)) == [[2, 4]]
    finally:
        pool.shutdown()
    failed = [line for line in lines if "failed to start" in line]
    assert len(failed) == 2 and "(1 of at most 2 in a row)" in failed[0] and "(2 of at most 2 in a row)" in failed[1], (
        lines
    )


def test_starts_that_keep_failing_end_with_an_error_naming_the_worker(ray_cluster, tmp_path):
    pool = WorkerPool(settings(max_redispatch=1), DiesStarting, (str(tmp_path / "starts"), 99), log=lambda line: None)
    try:
        with pytest.raises(
            WorkerError, match=r"standin-\w+-1: failed to start \(.+\); 2 starts in a row failed \(max_redispatch 1\)"
        ):
            pool.resize(1)
    finally:
        pool.shutdown()
