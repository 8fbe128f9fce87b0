"""PromptStream: the prompt groups of each step — the train rows in a seeded order, reshuffled
every epoch. Its cursor (epoch, position) is part of a checkpoint, so a resumed run takes exactly
the prompts the uninterrupted run would have taken."""

from __future__ import annotations

import random
from collections.abc import Sequence

from wavalign.data import PromptRow


class PromptStream:
    def __init__(self, rows: Sequence[PromptRow], seed: int, prompts_per_step: int) -> None:
        if prompts_per_step > len(rows):
            raise ValueError(
                f"train.rollout_batch_size asks for {prompts_per_step} prompts per step, the data has {len(rows)} rows"
            )
        self.rows, self.seed, self.per_step = list(rows), seed, prompts_per_step
        self.epoch, self.position = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        return random.Random(f"{self.seed}/{epoch}").sample(range(len(self.rows)), len(self.rows))

    def next_step(self) -> list[PromptRow]:
        """The next step's prompts; an epoch's tail that is too short is left for the next epoch's start,
        so no prompt appears twice within a step."""
        if self.position + self.per_step > len(self.rows):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._shuffled(self.epoch)
        picked = self._order[self.position : self.position + self.per_step]
        self.position += self.per_step
        return [self.rows[i] for i in picked]

    def state_dict(self, give_back_last_step: bool = False) -> dict[str, int]:
        """The cursor; `give_back_last_step`: as if the last step's prompts had not been taken."""
        return {"epoch": self.epoch, "position": self.position - (self.per_step if give_back_last_step else 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffled(self.epoch)
