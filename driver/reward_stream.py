"""RewardStream: scores a step's rollouts while the rest of the step is still being sampled.

The rollout pool hands over each chunk of groups the moment it is in (`submit`); a background
thread scores it on the reward pool and feeds every finished group into the step's statistics
(learner.step_stats), so the reward work and the λ inputs do not wait for the slowest rollout
worker. `finish` is the step's one barrier: it waits for the last chunk and re-raises any error.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence

from learner.step_stats import StepStats
from wavalign.data import PromptRow
from wavalign.messages import RewardRequest, RewardResult, RolloutRecord

_DONE = object()


def reward_request(row: PromptRow, record: RolloutRecord) -> RewardRequest:
    extra = dict(row.extra) if row.answer is None else {**row.extra, "answer": row.answer}
    return RewardRequest(
        row.row_id, record.sample_index, record.response_token_ids, row.question_text, row.sft_target_text, extra
    )


class RewardStream:
    def __init__(self, reward_pool, rows: Mapping[str, PromptRow], stats: StepStats) -> None:
        self.pool, self.rows, self.stats = reward_pool, rows, stats
        self.results: dict[tuple[str, int], RewardResult] = {}
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="reward-stream", daemon=True)
        self._thread.start()

    def submit(self, records: Sequence[RolloutRecord]) -> None:
        self._queue.put(list(records))

    def _run(self) -> None:
        while (records := self._queue.get()) is not _DONE:
            if self._error is not None:
                continue  # drain; the error is raised by finish()
            try:
                requests = [reward_request(self.rows[r.prompt_id], r) for r in records]
                for result in self.pool.score(requests):
                    self.results[(result.prompt_id, result.sample_index)] = result
                for prompt_id in dict.fromkeys(r.prompt_id for r in records):
                    group = sorted(r.sample_index for r in records if r.prompt_id == prompt_id)
                    self.stats.add_group(prompt_id, [self.results[(prompt_id, i)].total for i in group])
            except BaseException as err:  # noqa: BLE001 - handed to the driver thread
                self._error = err

    def finish(self, timeout: float) -> dict[tuple[str, int], RewardResult]:
        self._queue.put(_DONE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"reward scoring did not finish within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self.results
