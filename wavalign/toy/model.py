"""The tiny policy: a random-init Qwen2-architecture causal LM, warm-started by supervised training on
the toy task until it emits well-formed interleaved answers that are right only part of the time.

Runs in plain torch + transformers on CPU (a few minutes at most).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from wavalign.config import ToyConfig, WarmStartConfig
from wavalign.data import PromptRow
from wavalign.layout import SpeechLayout
from wavalign.toy.metrics import ToyScorer
from wavalign.toy.tokenizer import MAX_POSITIONS

HEAD_DIM = 64  # vLLM's CPU attention kernels reject smaller heads


def build_tiny_model(vocab_size: int, layout: SpeechLayout, toy: ToyConfig) -> Qwen2ForCausalLM:
    heads = toy.hidden_size // HEAD_DIM
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=toy.hidden_size,
        intermediate_size=4 * toy.hidden_size,
        num_hidden_layers=toy.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        eos_token_id=layout.eos_id,
        pad_token_id=layout.pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(toy.seed)
    return Qwen2ForCausalLM(config).float()


@dataclass
class WarmStartResult:
    steps: int
    seconds: float
    final_loss: float
    probe: dict[str, float]  # greedy metrics on the train prompts at the stop


def generate(
    model: Qwen2ForCausalLM,
    prompts: Sequence[Sequence[int]],
    layout: SpeechLayout,
    max_new_tokens: int,
    temperature: float | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """Response ids per prompt (greedy when temperature is None), left-padded batches."""
    model.eval()
    responses: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[layout.pad_id] * (width - len(p)) + list(p) for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
            if temperature
            else {"do_sample": False}
        )
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=layout.eos_id,
                pad_token_id=layout.pad_id,
                **sampling,
            )
        for row in out[:, width:].tolist():
            responses.append(row[: row.index(layout.eos_id) + 1] if layout.eos_id in row else row)
    return responses


ReferenceFor = Callable[[PromptRow, random.Random], Sequence[int]]


def training_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (prompt, answer) pairs; labels only on the answer (assistant) tokens."""
    width = max(len(prompt) + len(answer) for prompt, answer in pairs)
    ids, labels, mask = [], [], []
    for prompt, answer in pairs:
        seq = [*prompt, *answer]
        pad = width - len(seq)
        ids.append(seq + [pad_id] * pad)
        labels.append([-100] * len(prompt) + list(answer) + [-100] * pad)
        mask.append([1] * len(seq) + [0] * pad)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def warm_start(
    model: Qwen2ForCausalLM,
    rows: Sequence[PromptRow],
    reference_for: ReferenceFor,
    scorer: ToyScorer,
    cfg: WarmStartConfig,
    seed: int,
    log: Callable[[str], None] = print,
) -> WarmStartResult:
    """AdamW on (prompt, reference_for(row)) pairs; after cfg.min_steps, stop once greedy answers to
    every prompt are well-formed (share >= cfg.min_well_formed) and their speech decodes to their
    text (WER <= cfg.max_word_error_rate), or at cfg.max_steps."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    prompts = [r.prompt_token_ids for r in rows]
    answers = [int(r.answer) for r in rows]
    references = [r.reference_token_ids for r in rows]
    max_new = max(len(r) for r in references) + 8
    started, loss_value, probe = time.monotonic(), float("nan"), {}
    for step in range(1, cfg.max_steps + 1):
        model.train()
        batch = rng.sample(list(rows), min(cfg.batch_size, len(rows)))
        pairs = [(r.prompt_token_ids, reference_for(r, rng)) for r in batch]
        loss = model(**training_batch(pairs, scorer.layout.pad_id)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        if (step % cfg.check_every == 0 and step >= cfg.min_steps) or step == cfg.max_steps:
            probe = scorer.evaluate(generate(model, prompts, scorer.layout, max_new), answers, references)
            log(
                f"warm-start step {step}: loss {loss_value:.3f}, greedy accuracy {probe['semantic_accuracy']:.2f}, "
                f"speech WER {probe['acoustic_wer']:.3f}, well-formed {probe['well_formed_frac']:.2f}"
            )
            if probe["well_formed_frac"] >= cfg.min_well_formed and probe["acoustic_wer"] <= cfg.max_word_error_rate:
                break
    return WarmStartResult(steps=step, seconds=time.monotonic() - started, final_loss=loss_value, probe=probe)
