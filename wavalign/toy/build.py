"""Building the toy assets (called by wavalign/toy/assets.py's ensure_toy_assets, into a staging
folder): the tokenizer, the data files, the tiny model warm-started on the toy task, its report."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from wavalign.config import LayoutConfig, ToyConfig
from wavalign.data import PromptRow, read_rows, write_rows
from wavalign.layout import layout_fields, resolve_layout
from wavalign.toy.assets import ToyAssets, toy_codec, toy_scorer
from wavalign.toy.model import ReferenceFor, build_tiny_model, generate, warm_start
from wavalign.toy.rows import ToyEncoder, toy_corpus
from wavalign.toy.task import all_questions, split_questions
from wavalign.toy.tokenizer import build_tokenizer

SAMPLING_TEMPERATURE = 0.7  # the method's rollout temperature, for the reported sampled accuracy


def _label_noise(questions: list, toy: ToyConfig) -> list[tuple[float, int]]:
    """Per question: a seeded rate of right references and a fixed wrong result (see WarmStartConfig)."""
    rng = random.Random(toy.seed)
    ws = toy.warm_start
    return [
        (rng.uniform(ws.correct_rate_min, ws.correct_rate_max), q.wrong_result(rng, ws.wrong_answer)) for q in questions
    ]


def _noisy_references(questions: list, rows: list, noise: list, encoder: ToyEncoder) -> ReferenceFor:
    """The warm start's references: each draw is the right answer at its question's rate, else the
    question's wrong one."""
    plan = {
        row.row_id: (rate, encoder.reference_ids(q), encoder.reference_ids(q, wrong))
        for q, row, (rate, wrong) in zip(questions, rows, noise)
    }

    def reference_for(row: PromptRow, draw: random.Random) -> Sequence[int]:
        rate, right, wrong = plan[row.row_id]
        return right if draw.random() < rate else wrong

    return reference_for


def _sft_results(questions: list, noise: list, toy: ToyConfig) -> list[int | None]:
    """What each train row's SFT reference states: the true result (None), or with
    toy.noisy_sft_references one seeded draw from the warm start's label noise for its question."""
    if not toy.noisy_sft_references:
        return [None] * len(questions)
    rng = random.Random(toy.seed + 1)
    return [None if rng.random() < rate else wrong for (rate, wrong) in noise]


def build_assets(out: Path, toy: ToyConfig, layout_cfg: LayoutConfig, log: Callable[[str], None]) -> None:
    questions = all_questions(toy.max_operand)
    tokenizer = build_tokenizer(toy_corpus(questions), layout_fields(layout_cfg))
    layout = resolve_layout(layout_cfg, tokenizer)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    encoder = ToyEncoder(encode, layout, layout_cfg, toy_codec(toy, layout.num_speech_tokens))
    assets = ToyAssets(out)

    train_q, eval_q = split_questions(questions, toy.eval_fraction, toy.seed)
    noise = _label_noise(train_q + eval_q, toy)  # the train questions' first: the same draws either way
    stated = {"train": _sft_results(train_q, noise[: len(train_q)], toy), "eval": [None] * len(eval_q)}
    for split, questions in (("train", train_q), ("eval", eval_q)):
        rows = [encoder.row(q, f"toy-{split}-{i:04d}", s) for i, (q, s) in enumerate(zip(questions, stated[split]))]
        for suffix in (".jsonl", ".parquet"):
            write_rows(rows, assets.data_file(split, suffix))
    log(f"toy assets: {len(train_q)} train and {len(eval_q)} eval questions written")

    def load(split: str) -> list:
        return read_rows(assets.data_file(split), vocab_size=len(tokenizer), max_prompt_tokens=10**6).rows

    train_rows, eval_rows = load("train"), load("eval")
    model = build_tiny_model(len(tokenizer), layout, toy)
    log(f"toy assets: tiny Qwen2 model, {sum(p.numel() for p in model.parameters()):,} parameters")
    scorer = toy_scorer(layout, toy, tokenizer)
    # the warm start's questions: the train split, or (warm_start.questions: all) every question, as
    # a pretrained model knows more than its post-training data holds
    every = toy.warm_start.questions == "all"
    taught_q, taught_rows = (train_q + eval_q, train_rows + eval_rows) if every else (train_q, train_rows)
    reference_for = _noisy_references(taught_q, taught_rows, noise[: len(taught_q)], encoder)
    result = warm_start(model, taught_rows, reference_for, scorer, toy.warm_start, toy.seed, log)
    model.save_pretrained(assets.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(assets.model_dir)

    report: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "warm_start_steps": result.steps,
        "warm_start_seconds": round(result.seconds, 1),
        "final_loss": result.final_loss,
    }
    max_new = max(len(r.reference_token_ids) for r in train_rows) + 8
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        prompts = [r.prompt_token_ids for r in rows]
        answers = [int(r.answer) for r in rows]
        refs = [r.reference_token_ids for r in rows]
        for mode, temperature in (("greedy", None), ("sampled", SAMPLING_TEMPERATURE)):
            torch.manual_seed(toy.seed)
            metrics = scorer.evaluate(generate(model, prompts, layout, max_new, temperature), answers, refs)
            report[f"{split}_{mode}"] = {k: round(v, 4) for k, v in metrics.items()}
        report[f"{split}_reference"] = {k: round(v, 4) for k, v in scorer.evaluate(refs, answers, refs).items()}
    (out / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
    log("toy assets: " + json.dumps({k: report[k] for k in ("train_sampled", "eval_sampled")}))
