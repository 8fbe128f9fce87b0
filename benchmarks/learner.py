"""Learner benchmark, measured in one run on the same model and batch:

1. a bare torch step (the baseline): forward, token-mean cross-entropy on the response tokens,
   backward per micro-batch, gradient clipping, AdamW step;
2. the LearnerWorker's step: DeepSpeed (the configured ZeRO stage), the WavAlign objective
   (group-relative policy gradient on text tokens + SFT anchor, mixed by λ), the same micro-batches.

Both see the same rows (P prompts x G rollouts + P reference rows) and alternate, so machine noise
hits both alike. Prints learner tokens/s over bare tokens/s (target >= 0.9). `--hidden/--layers`
swap the tiny model for a larger random Qwen2 with the toy vocabulary. Usage:
    .venv/bin/python benchmarks/learner.py [--config pipeline.yaml] [--prompts 8] [--repeats 5]
        [--hidden 512 --layers 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# Run as a script, this file's folder leads sys.path and its name would shadow the `learner` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])


def padded(prompts, responses, pad_id: int):
    """Right-padded prompt+response ids, attention, and a mask of the positions that predict a response token."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention, targets = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor([*p, *r])
        attention[i, : len(p) + len(r)] = 1
        targets[i, len(p) - 1 : len(p) + len(r) - 1] = True
    return ids, attention, targets


class BareTorchStep:
    """The baseline: a plain torch training step over the same micro-batches."""

    def __init__(self, model_dir, cfg, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM

        lc = cfg.learner
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=lc.learning_rate,
            betas=tuple(lc.adam_betas),
            eps=lc.adam_eps,
            weight_decay=lc.weight_decay,
        )
        self.clip, self.micro = lc.grad_clip, lc.micro_batch_rows

    def step(self, row_sets) -> None:
        total = sum(len(ids) for ids, _, _ in row_sets)
        for ids, attention, targets in row_sets:
            for start in range(0, len(ids), self.micro):
                part = slice(start, start + self.micro)
                logits = self.model(input_ids=ids[part], attention_mask=attention[part]).logits[:, :-1]
                mask = targets[part][:, :-1].float()
                logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[part][:, 1:, None]).squeeze(-1)
                per_row = -(logp * mask).sum(1) / mask.sum(1).clamp_min(1)
                (per_row.sum() / total).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (each with G rollouts + 1 SFT row)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--hidden", type=int, default=0, help="use a random Qwen2 of this hidden size (0 = the tiny model)"
    )
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()

    import random
    import tempfile

    from actors.learner import LearnerWorker
    from learner.advantages import group_advantages
    from wavalign.config_file import read_config
    from wavalign.data import read_rows
    from wavalign.messages import TrainBatch
    from wavalign.model_files import load_tokenizer_and_layout
    from wavalign.toy.assets import ensure_toy_assets
    from wavalign.toy.resized import resized_model

    cfg = read_config(args.config, [*args.set, "learner.grad_norm_every=0", "learner.precision=float32"])
    assets = ensure_toy_assets(cfg.toy, cfg.model.layout)
    tokenizer, layout = load_tokenizer_and_layout(assets.model_dir, cfg.model.layout)
    rows = read_rows(
        assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=cfg.data.max_prompt_tokens
    ).rows
    rng, G = random.Random(cfg.run.seed), cfg.rollout.group_size
    chosen = rng.sample(rows, args.prompts)
    # G "rollouts" per prompt: the reference cut at random lengths (the learner's work depends only on lengths)
    responses = [
        r.reference_token_ids[: rng.randint(len(r.reference_token_ids) // 2, len(r.reference_token_ids))]
        for r in chosen
        for _ in range(G)
    ]
    prompts = [r.prompt_token_ids for r in chosen for _ in range(G)]
    rewards = torch.tensor([rng.uniform(1, 5) for _ in responses]).view(-1, G)
    batch = TrainBatch(
        prompts,
        responses,
        group_advantages(rewards).flatten().tolist(),
        [r.prompt_token_ids for r in chosen],
        [r.reference_token_ids for r in chosen],
        lam=0.5,
    )
    row_sets = [
        padded(batch.rollout_prompts, batch.rollout_responses, layout.pad_id),
        padded(batch.sft_prompts, batch.sft_targets, layout.pad_id),
    ]
    tokens = sum(int(attention.sum()) for _, attention, _ in row_sets)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (
            resized_model(assets.model_dir, args.hidden, args.layers, tmp) if args.hidden else str(assets.model_dir)
        )
        learner = LearnerWorker(model_dir, cfg)
        bare = BareTorchStep(model_dir, cfg, learner.device)  # the baseline on the learner's device (a GPU there)
        row_sets = [tuple(t.to(learner.device) for t in rows) for rows in row_sets]
        parameters = sum(p.numel() for p in bare.model.parameters())
        bare.step(row_sets), learner.train_step(batch)  # warm-up
        bare_s, learner_s = [], []
        for _ in range(args.repeats):
            bare_s.append(timed(lambda: bare.step(row_sets)))
            learner_s.append(timed(lambda: learner.train_step(batch)))
    bare_rate, learner_rate = tokens / statistics.median(bare_s), tokens / statistics.median(learner_s)
    result = {
        "parameters": parameters,
        "zero_stage": cfg.learner.zero_stage,
        "rows": len(responses) + len(chosen),
        "tokens_per_step": tokens,
        "micro_batch_rows": cfg.learner.micro_batch_rows,
        "bare_step_s": round(statistics.median(bare_s), 4),
        "learner_step_s": round(statistics.median(learner_s), 4),
        "bare_tokens_per_s": round(bare_rate, 1),
        "learner_tokens_per_s": round(learner_rate, 1),
        "learner_over_bare": round(learner_rate / bare_rate, 3),
    }
    print(json.dumps(result, indent=2))
    print(f"learner / bare torch tokens/s = {result['learner_over_bare']:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
