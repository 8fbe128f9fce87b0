"""WorkerPool: a resizable, self-healing set of identical Ray workers with deadlines on every wait.

The rollout and reward pools are built on it. It
- starts workers (plain classes made Ray workers here) and brings each up through `bring_up`, which a
  subclass extends (the rollout pool pushes the current weights before a worker is used);
- grows or shrinks to a size between batches (`resize`);
- maps chunks of work over the idle workers (`map_chunks`): a chunk whose worker dies is re-sent, to
  a replacement (brought up first) or another worker, at most `max_redispatch` times; a chunk's
  result is accepted once, so every chunk comes back exactly once;
- replaces a worker that dies (or fails) while it starts, new or a replacement, by another, unless
  more than `max_redispatch` starts in a row have failed: then an error names the worker and cause;
- turns any wait that passes its deadline into an error naming the worker.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError


class WorkerError(RuntimeError):
    """A worker failed, or did not answer in time; the message names it."""


@dataclass(frozen=True)
class PoolSettings:
    kind: str  # "rollout" | "reward": names the workers
    num_workers: int
    num_cpus: float
    num_gpus: float
    start_timeout_s: float
    call_timeout_s: float
    max_redispatch: int
    env_vars: tuple[tuple[str, str], ...] = ()  # set in each worker's process before it starts
    bundle: tuple[tuple[str, float], ...] = ()  # each worker's placement group (its CPUs, GPUs, resources)


@dataclass(eq=False)  # identity: two members are never equal
class Member:
    name: str
    handle: Any  # ray.actor.ActorHandle
    state: str = "starting"  # starting -> idle <-> busy; removed when dead
    pid: int | None = None
    start_deadline: float = 0.0
    placement: Any = None  # its placement group (removed with it)
    info: dict = field(default_factory=dict)  # what the worker said when it came up


@dataclass
class _Chunk:
    index: int
    work: Any
    attempts: int = 0


@dataclass
class _Call:
    member: Member
    kind: str  # "start" | "work"
    deadline: float
    chunk: _Chunk | None = None
    started: float = field(default_factory=time.monotonic)


class WorkerPool:
    def __init__(
        self,
        settings: PoolSettings,
        worker_cls: type,
        worker_args: tuple,
        log: Callable[[str], None] = print,
        on_dispatch: Callable[[Member, int], None] | None = None,
    ) -> None:
        self.settings, self.worker_args, self.log = settings, worker_args, log
        self.on_dispatch = on_dispatch  # called with (member, chunk index) as a chunk is sent (tests, metrics)
        env = {"runtime_env": {"env_vars": dict(settings.env_vars)}} if settings.env_vars else {}
        self._remote_cls = ray.remote(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, max_restarts=0, **env)(
            worker_cls
        )
        self._pool_id = uuid.uuid4().hex[:6]
        self._serial = 0
        self.members: list[Member] = []
        self._starting: dict[ray.ObjectRef, Member] = {}  # workers still coming up (new, grown or replacements)
        self.replacements = 0
        self.failed_starts = 0  # workers in a row that died or failed before they came up
        self.target_size = settings.num_workers

    # ----------------------------------------------------------------------------------- membership
    def states(self) -> dict[str, str]:
        return {m.name: m.state for m in self.members}

    def resize(self, num_workers: int) -> None:
        """Grow (each new worker is brought up before it is used) or shrink to num_workers."""
        self.start_resize(num_workers)
        self.wait_until_up()

    def start_resize(self, num_workers: int) -> None:
        """Shrink at once, or start the missing workers without waiting for them: the next
        `map_chunks` (or `wait_until_up`) takes them in once they are up, so growing a pool never
        stalls a batch, and several pools can come up at the same time."""
        if num_workers < 1:
            raise ValueError(f"a {self.settings.kind} pool needs at least one worker")
        self.target_size = num_workers
        while len(self.members) > num_workers:
            member = self.members[-1]
            self._remove(member)
            self.log(f"{self.settings.kind} pool: removed {member.name}")
        for member in [self._start_member() for _ in range(num_workers - len(self.members))]:
            self._starting[self.bring_up(member)] = member

    def wait_until_up(self) -> None:
        """Every worker still starting is up (a worker that dies starting is replaced, within
        max_redispatch), or an error names those that are not."""
        pending, self._starting = self._starting, {}
        while pending:
            nearest = min(m.start_deadline for m in pending.values())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, nearest - time.monotonic()))
            if not ready:
                names = ", ".join(m.name for m in pending.values() if m.start_deadline <= nearest)
                needs = f" (each needs {dict(self.settings.bundle)} on one node)" if self.settings.bundle else ""
                raise WorkerError(f"{names}: not up after start_timeout_s={self.settings.start_timeout_s:g}s{needs}")
            member = pending.pop(ready[0])
            if (again := self._take_in(member, ready[0])) is not None:
                pending[self.bring_up(again)] = again

    def _start_member(self) -> Member:
        name = f"{self.settings.kind}-{self._pool_id}-{self._serial}"
        self._serial += 1
        placement = reserve([dict(self.settings.bundle)], name, log=self.log) if self.settings.bundle else None
        handle = self._remote_cls.options(name=name, **placed(placement)).remote(*self.worker_args)
        member = Member(name=name, handle=handle, start_deadline=time.monotonic() + self.settings.start_timeout_s)
        member.placement = placement
        self.members.append(member)
        return member

    def bring_up(self, member: Member) -> ray.ObjectRef:
        """A ref that resolves (to a dict about the worker) once the member may be given work."""
        return member.handle.ready.remote()

    def is_current(self, member: Member) -> bool:
        """Whether a worker that has just come up may be given work as it is (the rollout pool: it
        serves the current weights; they may have changed while it started)."""
        return True

    def _take_in(self, member: Member, ref: ray.ObjectRef) -> Member | None:
        """Takes in a worker whose bring-up finished: None once it is up; else the member to bring
        up (again): itself when the weights changed while it started, a new worker in its place
        when it died or failed starting."""
        try:
            member.info = ray.get(ref)
        except (RayActorError, RayTaskError) as err:
            return self._start_failed(member, err)
        member.pid = member.info.get("pid")
        if not self.is_current(member):
            member.start_deadline = time.monotonic() + self.settings.start_timeout_s
            return member
        member.state = "idle"
        self.failed_starts = 0
        self.log(f"{self.settings.kind} pool: {member.name} up (pid {member.pid})")
        return None

    def _start_failed(self, member: Member, err: Exception) -> Member:
        """Removes a worker that died or failed before it came up and starts another in its place,
        unless more than max_redispatch starts in a row have failed (a cause that will not go away:
        a bad model path, a node out of memory): then the error names the worker and the cause."""
        self._remove(member)
        self.failed_starts += 1
        cause, limit = first_line(err), self.settings.max_redispatch
        if self.failed_starts > limit:
            raise WorkerError(
                f"{member.name}: failed to start ({cause}); {self.failed_starts} starts in a row failed "
                f"(max_redispatch {limit})"
            )
        replacement = self._start_member()
        self.log(
            f"{self.settings.kind} pool: {member.name} failed to start ({cause}); starting {replacement.name} "
            f"in its place ({self.failed_starts} of at most {limit} in a row)"
        )
        return replacement

    def _remove(self, member: Member) -> None:
        if member in self.members:
            self.members.remove(member)
        self._starting = {ref: m for ref, m in self._starting.items() if m is not member}
        ray.kill(member.handle)
        if member.placement is not None:
            ray.util.remove_placement_group(member.placement)

    def pids(self) -> dict[str, int]:
        return {m.name: m.pid for m in self.members}

    def shutdown(self) -> None:
        for member in list(self.members):
            self._remove(member)

    # ---------------------------------------------------------------------------------------- work
    def map_chunks(
        self,
        chunks: Sequence[Any],
        submit: Callable[[Any, Any], ray.ObjectRef],
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Results of `submit(handle, chunk)` for every chunk, in chunk order, each exactly once.
        `on_result(index, result)` sees each chunk's result as it is accepted (streaming consumers)."""
        queue = deque(_Chunk(i, work) for i, work in enumerate(chunks))
        results: dict[int, Any] = {}
        for _ in range(self.target_size - len(self.members)):  # top up after removals
            member = self._start_member()
            self._starting[self.bring_up(member)] = member
        calls = {ref: _Call(m, "start", m.start_deadline) for ref, m in self._starting.items()}
        self._starting = {}
        while queue or any(c.kind == "work" for c in calls.values()):
            for member in [m for m in self.members if m.state == "idle"]:
                if not queue:
                    break
                chunk = queue.popleft()
                chunk.attempts += 1
                member.state = "busy"
                deadline = time.monotonic() + self.settings.call_timeout_s
                calls[submit(member.handle, chunk.work)] = _Call(member, "work", deadline, chunk)
                if self.on_dispatch:
                    self.on_dispatch(member, chunk.index)
            if not calls:
                raise WorkerError(f"no {self.settings.kind} worker left")
            nearest = min(c.deadline for c in calls.values())
            ready, _ = ray.wait(list(calls), num_returns=1, timeout=max(0.0, nearest - time.monotonic()))
            if not ready:
                late = min(calls.values(), key=lambda c: c.deadline)
                what = "its work" if late.kind == "work" else "start-up"
                raise WorkerError(
                    f"{late.member.name}: no answer to {what} after {time.monotonic() - late.started:.0f}s"
                )
            call = calls.pop(ready[0])
            if call.kind == "start":
                if (again := self._take_in(call.member, ready[0])) is not None:
                    calls[self.bring_up(again)] = _Call(again, "start", again.start_deadline)
                continue
            try:
                result = ray.get(ready[0])
            except (RayActorError, RayTaskError) as err:
                if isinstance(err, RayTaskError) and not _process_died(err):
                    raise WorkerError(f"{call.member.name}: failed: {first_line(err)}") from None
                queue.appendleft(self._lost(call, err))
                replacement = self._start_member()
                calls[self.bring_up(replacement)] = _Call(replacement, "start", replacement.start_deadline)
                continue
            call.member.state = "idle"
            if call.chunk.index not in results:  # a chunk's result counts once
                results[call.chunk.index] = result
                if on_result:
                    on_result(call.chunk.index, result)
        # Replacements still starting finish coming up in the background; the next call collects them.
        self._starting = {ref: c.member for ref, c in calls.items() if c.kind == "start"}
        return [results[i] for i in range(len(chunks))]

    def split(self, items: Sequence[Any], per_chunk: int = 0) -> list[list[Any]]:
        """Chunks of `per_chunk` items (0 = spread evenly over the pool: one chunk per worker)."""
        size = per_chunk or -(-len(items) // max(1, len(self.members)))
        return [list(items[start : start + size]) for start in range(0, len(items), max(1, size))]

    def _lost(self, call: _Call, err: Exception) -> _Chunk:
        """The member died holding a chunk: remove it; give the chunk back unless re-sent too often."""
        self._remove(call.member)
        self.replacements += 1
        chunk = call.chunk
        self.log(
            f"{self.settings.kind} pool: {call.member.name} died ({first_line(err)}); re-sending chunk {chunk.index}"
        )
        if chunk.attempts > self.settings.max_redispatch:
            raise WorkerError(f"{call.member.name}: chunk {chunk.index} lost {chunk.attempts} times (max_redispatch)")
        return chunk


def _process_died(err: RayTaskError) -> bool:
    """A child engine process died under a live worker (vLLM's EngineCore): as good as dead."""
    return "EngineDeadError" in str(err) or "EngineCore" in str(err)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def reserve(bundles: list[dict[str, float]], name: str, strategy: str = "STRICT_PACK", log=print):
    """A placement group of `bundles` (Ray schedules it when some node, or nodes, offer them; a worker
    placed in it waits until then, within its start deadline). Says so at once when no node of the
    cluster could ever hold a bundle (an autoscaler may still add one)."""
    from ray.util.placement_group import placement_group

    if missing := unoffered(bundles[0]):
        log(f"warning: {name}: no node of the cluster offers {missing}; waiting for one to join")
    return placement_group(bundles, strategy=strategy, name=f"{name}-placement")


def unoffered(bundle: dict[str, float]) -> dict[str, float]:
    """The part of `bundle` that no live node has in total (empty when some node can hold it)."""
    totals = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if any(all(total.get(k, 0) >= v for k, v in bundle.items()) for total in totals):
        return {}
    return {k: v for k, v in bundle.items() if not any(total.get(k, 0) >= v for total in totals)} or bundle


def placed(group, index: int = 0) -> dict:
    """Actor options that put a worker into bundle `index` of `group` (none without a group)."""
    if group is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)}
