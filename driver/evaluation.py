"""Evaluation of the policy on held-out prompts: the toy task's semantic and acoustic metrics
(or, for other data, response lengths), from G sampled responses per prompt."""

from __future__ import annotations

from collections.abc import Sequence

from driver.heldout import HeldOut
from wavalign.config import PipelineConfig
from wavalign.data import PromptRow
from wavalign.messages import RolloutRecord


def scored_by_toy_task(cfg: PipelineConfig, rows: Sequence[PromptRow]) -> bool:
    """Toy rows on the tiny model: the toy task's metrics apply."""
    return cfg.model.path is None and all(r.answer is not None for r in rows)


def evaluate(
    cfg: PipelineConfig, tokenizer, layout, rows: Sequence[PromptRow], records: Sequence[RolloutRecord]
) -> dict[str, float]:
    if not scored_by_toy_task(cfg, rows):
        lengths = [len(r.response_token_ids) for r in records]
        return {"responses": len(records), "mean_response_tokens": sum(lengths) / max(len(lengths), 1)}
    from wavalign.toy.assets import toy_scorer

    by_id = {r.row_id: r for r in rows}
    return toy_scorer(layout, cfg.toy, tokenizer).evaluate(
        [r.response_token_ids for r in records],
        [int(by_id[r.prompt_id].answer) for r in records],
        [r.reference_token_ids for r in rows],
    )


def heldout(
    cfg: PipelineConfig,
    tokenizer,
    layout,
    rows: Sequence[PromptRow],
    records: Sequence[RolloutRecord],
    step: int,
    overall: dict[str, float],
) -> HeldOut:
    """Toy rows: the split's semantic accuracy and acoustic WER (`overall`: what `evaluate` gave for
    these records), and each prompt's accuracy."""
    from wavalign.toy.assets import toy_scorer

    scorer = toy_scorer(layout, cfg.toy, tokenizer)
    by_prompt: dict[str, list[Sequence[int]]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt_id, []).append(r.response_token_ids)
    per_prompt = {
        row.row_id: scorer.evaluate(mine, [int(row.answer)] * len(mine), [row.reference_token_ids])["semantic_accuracy"]
        for row in rows
        if (mine := by_prompt.get(row.row_id))
    }
    return HeldOut(
        step=step,
        semantic_accuracy=overall["semantic_accuracy"],
        acoustic_wer=overall["acoustic_wer"],
        per_prompt=per_prompt,
        samples_per_prompt=len(records) // max(len(per_prompt), 1),
    )
