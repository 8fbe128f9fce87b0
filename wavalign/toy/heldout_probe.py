"""Can training on the toy task's train split move its held-out split at all? (docs/heldout.md)

The upper bound of what any objective on the train prompts can do for the eval prompts: supervised
training of the warm-started tiny policy on the *correct* references of every train question (what
the SFT anchor teaches, with none of RL's noise), at several learning rates, evaluating both splits
every few steps — sampled accuracy (temperature 0.7, `--samples` per prompt, with its standard
error) and greedy accuracy. If the eval split does not rise under this, no RL setting can raise it
either: the eval questions share nothing with the train questions that the model can use.

    .venv/bin/python -m wavalign.toy.heldout_probe --lrs 1e-4,1e-3 --steps 300 --out runs/heldout-probe.json

Plain torch + transformers in this process (no Ray; torch's threads: OMP_NUM_THREADS, else one per
core): ~2 minutes per learning rate on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from wavalign.config_file import read_config
from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.toy.assets import ensure_toy_assets, toy_scorer
from wavalign.toy.model import generate, training_batch


def accuracy(model, rows, layout, scorer, samples: int, seed: int) -> dict[str, float]:
    """Sampled accuracy over `samples` draws per prompt (and its standard error over prompts), and
    greedy accuracy."""
    prompts = [r.prompt_token_ids for r in rows]
    answers = [int(r.answer) for r in rows]
    refs = [r.reference_token_ids for r in rows]
    max_new = max(len(r) for r in refs) + 8
    torch.manual_seed(seed)
    drawn = generate(model, [p for p in prompts for _ in range(samples)], layout, max_new, temperature=0.7)
    per_prompt = []
    for i in range(len(rows)):
        mine = drawn[i * samples : (i + 1) * samples]
        per_prompt.append(scorer.evaluate(mine, [answers[i]] * samples, [refs[i]] * samples)["semantic_accuracy"])
    mean = sum(per_prompt) / len(per_prompt)
    spread = math.sqrt(sum((a - mean) ** 2 for a in per_prompt) / max(len(per_prompt) - 1, 1))
    greedy = scorer.evaluate(generate(model, prompts, layout, max_new), answers, refs)
    return {
        "sampled": round(mean, 4),
        "sampled_se": round(spread / math.sqrt(len(per_prompt)), 4),
        "greedy": round(greedy["semantic_accuracy"], 4),
        "acoustic_wer": round(greedy["acoustic_wer"], 4),
    }


def probe(model_dir: Path, train, evals, layout, scorer, lr: float, steps: int, every: int, samples: int, seed: int):
    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(seed)
    curve = []
    for step in range(steps + 1):
        if step % every == 0:
            point = {"step": step}
            for split, rows in (("train", train), ("eval", evals)):
                point[split] = accuracy(model, rows, layout, scorer, samples, seed)
            curve.append(point)
            print(json.dumps({"lr": lr, **point}), flush=True)
        if step == steps:
            break
        model.train()
        batch = rng.sample(train, min(32, len(train)))
        loss = model(**training_batch([(r.prompt_token_ids, r.reference_token_ids) for r in batch], layout.pad_id)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return curve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--set", action="append", default=[], help="config overrides (the toy section)")
    parser.add_argument("--lrs", default="1e-4,1e-3")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--samples", type=int, default=8, help="sampled answers per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--questions", type=int, default=0, help="only the first N questions of each split (0 = all): a quick check"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.questions < 0:
        parser.error(f"--questions: {args.questions} is below 0 (0 = every question)")
    return args


def main() -> None:
    args = parse_args()
    cfg = read_config(args.config, args.set)
    assets = ensure_toy_assets(cfg.toy, cfg.model.layout)
    tokenizer, layout = load_tokenizer_and_layout(str(assets.model_dir), cfg.model.layout)
    scorer = toy_scorer(layout, cfg.toy, tokenizer)

    def rows(split: str):
        found = read_rows(assets.data_file(split), vocab_size=len(tokenizer), max_prompt_tokens=10**6).rows
        return found[: args.questions] if args.questions > 0 else found

    train, evals = rows("train"), rows("eval")
    started = time.monotonic()
    results = {
        "train_questions": len(train),
        "eval_questions": len(evals),
        "samples_per_prompt": args.samples,
        "curves": {
            lr: probe(
                assets.model_dir,
                train,
                evals,
                layout,
                scorer,
                float(lr),
                args.steps,
                args.every,
                args.samples,
                args.seed,
            )
            for lr in args.lrs.split(",")
        },
    }
    results["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
