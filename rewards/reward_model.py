"""A local HF sequence-classification model as a reward function (method §4's model-based path):
the reward is `logits[:, 0]` of the (question, answer transcript) pair, mapped onto the judge's
scale as low + (high - low) * sigmoid(logit) (a Bradley-Terry reward model's logit is a log-odds),
since every reward function scores on that scale: λ's constants and the weighted total assume it.
Any local directory that `AutoModelForSequenceClassification` loads works; heavy imports happen in
the constructor."""

from __future__ import annotations

from collections.abc import Sequence

from rewards.types import ScoredResponse


class HFRewardModel:
    """Scores (question, transcript) pairs in batches, on CPU or a GPU. Example:

    rm = HFRewardModel("/models/my-reward-model")
    rm([ScoredResponse("what is one plus one", "one plus one is two")])   # -> [3.8], say (logit 0.83)
    """

    def __init__(
        self,
        path: str,
        scale: tuple[float, float] = (1.0, 5.0),
        batch_size: int = 16,
        max_length: int = 1024,
        device: str = "cpu",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.low, self.high = scale

    def __call__(self, responses: Sequence[ScoredResponse]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(responses), self.batch_size):
            batch = responses[start : start + self.batch_size]
            inputs = self.tokenizer(
                [r.question for r in batch],
                [r.text or "[empty]" for r in batch],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with self._torch.no_grad():
                logits = self.model(**inputs).logits[:, 0].double()
            scores.extend((self.low + (self.high - self.low) * self._torch.sigmoid(logits)).tolist())
        return scores
