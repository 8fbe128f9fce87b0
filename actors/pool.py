"""RolloutPool: the run's rollout workers on Ray — sized by config, resizable between steps,
self-healing, and kept on one policy version.

- `generate` spreads prompt groups over the live workers (a whole group always on one worker) and
  returns every group exactly once: a chunk whose worker dies is re-sent (to a replacement or
  another worker), and a chunk's results are accepted once.
- `sync_weights` streams the new weights to every worker in buckets; a worker whose update fails or
  times out is removed (never left serving stale weights) and the error names it.
- `resize` grows or shrinks the pool between steps; a new worker receives the current weights before
  it is given any prompt.
Every wait has a deadline; a hang becomes an error naming the worker.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.rollout import RolloutRecord, RolloutWorker
from wavalign.config import PipelineConfig

Prompt = tuple[str, Sequence[int]]  # (prompt id, prompt token ids): one group of G responses


class RolloutError(RuntimeError):
    """A rollout worker failed; the message names it."""


class WeightSyncError(RolloutError):
    pass


@dataclass(eq=False)  # identity: two members are never equal
class Member:
    name: str
    handle: Any  # ray.actor.ActorHandle
    state: str = "starting"  # starting -> idle <-> busy; removed when dead
    pid: int | None = None
    version: int = 0
    start_deadline: float = 0.0


@dataclass
class _Chunk:
    index: int
    prompts: list[Prompt]
    attempts: int = 0


@dataclass
class _Call:
    member: Member
    kind: str  # "start" | "generate"
    deadline: float
    chunk: _Chunk | None = None
    started: float = field(default_factory=time.monotonic)


class RolloutPool:
    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: str,
        worker_cls: type = RolloutWorker,
        log: Callable[[str], None] = print,
        on_dispatch: Callable[[Member, int], None] | None = None,
    ) -> None:
        self.cfg, self.model_path, self.log = cfg, model_path, log
        self.on_dispatch = on_dispatch  # called with (member, chunk index) as a chunk is sent (tests, metrics)
        rc = cfg.rollout
        self._remote_cls = ray.remote(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker, max_restarts=0)(worker_cls)
        self._pool_id = uuid.uuid4().hex[:6]
        self._serial = 0
        self.members: list[Member] = []
        self.version = 0
        self._weights: list[tuple[ray.ObjectRef, int]] = []  # buckets of self.version; empty = the checkpoint
        self._starting: dict[ray.ObjectRef, Member] = {}  # replacements still coming up
        self.replacements = 0
        self.target_size = rc.num_workers
        self.resize(rc.num_workers)

    # ----------------------------------------------------------------------------------- membership
    def states(self) -> dict[str, str]:
        return {m.name: m.state for m in self.members}

    def resize(self, num_workers: int) -> None:
        """Grow (new workers get the current weights before they are used) or shrink to num_workers."""
        if num_workers < 1:
            raise ValueError("a rollout pool needs at least one worker")
        self.target_size = num_workers
        while len(self.members) > num_workers:
            member = self.members.pop()
            ray.kill(member.handle)
            self.log(f"rollout pool: removed {member.name}")
        starting = [self._start_member() for _ in range(num_workers - len(self.members))]
        pending = {self._bring_up(m): m for m in starting}
        deadline = time.monotonic() + self.cfg.rollout.start_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                names = ", ".join(m.name for m in pending.values())
                raise RolloutError(f"{names}: not up after rollout.start_timeout_s={self.cfg.rollout.start_timeout_s:g}s")
            member = pending.pop(ready[0])
            self._mark_up(member, ready[0])

    def _start_member(self) -> Member:
        name = f"rollout-{self._pool_id}-{self._serial}"
        self._serial += 1
        handle = self._remote_cls.options(name=name).remote(self.model_path, self.cfg)
        member = Member(name=name, handle=handle, start_deadline=time.monotonic() + self.cfg.rollout.start_timeout_s)
        self.members.append(member)
        return member

    def _bring_up(self, member: Member) -> ray.ObjectRef:
        """A ref that resolves once the member is up and serves the pool's current version."""
        if not self._weights:
            return member.handle.ready.remote()
        return self._push_weights(member)

    def _push_weights(self, member: Member) -> ray.ObjectRef:
        total = sum(count for _, count in self._weights)
        # Bucket refs as top-level arguments: Ray resolves them into the worker's call.
        return member.handle.update_weights.remote(self.version, total, *(ref for ref, _ in self._weights))

    def _mark_up(self, member: Member, ref: ray.ObjectRef) -> None:
        try:
            answer = ray.get(ref)
        except (RayActorError, RayTaskError) as err:
            self._remove(member)
            raise RolloutError(f"{member.name}: failed to start: {_first_line(err)}") from None
        member.state = "idle"
        if isinstance(answer, dict):  # ready(): {"pid", "policy_version"}
            member.pid, member.version = answer["pid"], answer["policy_version"]
        else:  # update_weights(): the version now served
            member.version = answer
        self.log(f"rollout pool: {member.name} up, serving policy version {member.version}")

    def _remove(self, member: Member) -> None:
        if member in self.members:
            self.members.remove(member)
        self._starting = {ref: m for ref, m in self._starting.items() if m is not member}
        ray.kill(member.handle)

    def pids(self) -> dict[str, int]:
        """Process id of each worker (asks the workers whose pid is not known yet)."""
        for m in self.members:
            if m.pid is None:
                m.pid = ray.get(m.handle.ready.remote(), timeout=self.cfg.rollout.timeout_s)["pid"]
        return {m.name: m.pid for m in self.members}

    # ------------------------------------------------------------------------------------ weights
    def sync_weights(self, buckets: Iterable[tuple[bytes, int]], version: int) -> float:
        """Stream new weights (safetensors buckets, see wavalign.weights) to every worker; returns seconds."""
        if version <= self.version:
            raise ValueError(f"policy version must increase: {version} <= {self.version}")
        started = time.monotonic()
        # uint8 arrays: the workers read them zero-copy from the object store.
        self._weights = [(ray.put(np.frombuffer(blob, dtype=np.uint8)), count) for blob, count in buckets]
        self.version = version
        finishing = {self._push_weights(m): m for m in self.members}
        deadline = time.monotonic() + self.cfg.rollout.update_timeout_s
        failures = []
        while finishing:
            ready, _ = ray.wait(list(finishing), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for member in finishing.values():
                    failures.append(f"{member.name}: no answer within rollout.update_timeout_s={self.cfg.rollout.update_timeout_s:g}s")
                    self._remove(member)
                break
            member = finishing.pop(ready[0])
            try:
                member.version = ray.get(ready[0])
            except (RayActorError, RayTaskError) as err:
                failures.append(f"{member.name}: {_first_line(err)}")
                self._remove(member)
        if failures:
            raise WeightSyncError(f"weight update to version {version} failed; removed " + "; ".join(failures))
        return time.monotonic() - started

    # --------------------------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[Prompt]) -> list[RolloutRecord]:
        """G records per prompt, in prompt order, each group exactly once."""
        chunks = deque(self._chunks(list(prompts)))
        results: dict[int, list[RolloutRecord]] = {}
        for _ in range(self.target_size - len(self.members)):  # top up after removals (failed syncs)
            member = self._start_member()
            self._starting[self._bring_up(member)] = member
        calls = {ref: _Call(m, "start", m.start_deadline) for ref, m in self._starting.items()}
        self._starting = {}
        timeout = self.cfg.rollout.timeout_s
        while chunks or any(c.kind == "generate" for c in calls.values()):
            for member in [m for m in self.members if m.state == "idle"]:
                if not chunks:
                    break
                chunk = chunks.popleft()
                chunk.attempts += 1
                member.state = "busy"
                calls[member.handle.generate.remote(chunk.prompts)] = _Call(member, "generate", time.monotonic() + timeout, chunk)
                if self.on_dispatch:
                    self.on_dispatch(member, chunk.index)
            if not calls:
                raise RolloutError("no rollout worker left to sample with")
            nearest = min(c.deadline for c in calls.values())
            ready, _ = ray.wait(list(calls), num_returns=1, timeout=max(0.0, nearest - time.monotonic()))
            if not ready:
                late = min(calls.values(), key=lambda c: c.deadline)
                what = "generate" if late.kind == "generate" else "start"
                raise RolloutError(f"{late.member.name}: no answer to {what} after {time.monotonic() - late.started:.0f}s")
            call = calls.pop(ready[0])
            if call.kind == "start":
                self._mark_up(call.member, ready[0])
                continue
            try:
                records = ray.get(ready[0])
            except (RayActorError, RayTaskError) as err:
                if isinstance(err, RayTaskError) and not _engine_died(err):
                    raise RolloutError(f"{call.member.name}: generate failed: {_first_line(err)}") from None
                chunks.appendleft(self._lost(call, err))
                replacement = self._start_member()
                calls[self._bring_up(replacement)] = _Call(replacement, "start", replacement.start_deadline)
                continue
            call.member.state = "idle"
            results.setdefault(call.chunk.index, records)  # a chunk's results count once
        # Replacements still starting finish coming up in the background; the next call collects them.
        self._starting = {ref: c.member for ref, c in calls.items() if c.kind == "start"}
        return [record for index in sorted(results) for record in results[index]]

    def _chunks(self, prompts: list[Prompt]) -> list[_Chunk]:
        size = self.cfg.rollout.groups_per_call or -(-len(prompts) // max(1, len(self.members)))
        return [_Chunk(i, prompts[start : start + size]) for i, start in enumerate(range(0, len(prompts), max(1, size)))]

    def _lost(self, call: _Call, err: Exception) -> _Chunk:
        """The member died with a chunk in hand: remove it, and give the chunk back unless retried too often."""
        self._remove(call.member)
        self.replacements += 1
        chunk = call.chunk
        self.log(f"rollout pool: {call.member.name} died during generate ({_first_line(err)}); re-sending {len(chunk.prompts)} groups")
        if chunk.attempts > self.cfg.rollout.max_redispatch:
            raise RolloutError(f"{call.member.name}: chunk {chunk.index} lost {chunk.attempts} times (rollout.max_redispatch)")
        return chunk

    def shutdown(self) -> None:
        for member in list(self.members):
            self._remove(member)


def _engine_died(err: RayTaskError) -> bool:
    """vLLM's engine process died under a live actor: the worker is as good as dead."""
    return "EngineDeadError" in str(err) or "EngineCore" in str(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
