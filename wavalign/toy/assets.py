"""Build (once, cached) the toy assets: tokenizer + tiny model (HF directory), train/eval data files
(JSONL and Parquet) and a warm-start report.

The cache lives in `toy.assets_dir` and is keyed by a fingerprint of the toy and layout config and
of ASSET_VERSION (wavalign/toy/cache.py; bump it when the generator changes). Building happens in a temporary directory
that is renamed into place, under a file lock, so a crash or a concurrent build never leaves a
half-built cache behind.
"""

from __future__ import annotations

import fcntl
import json
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wavalign.config import LayoutConfig, ToyConfig
from wavalign.data import PromptRow, read_rows, write_rows
from wavalign.layout import SpeechLayout, layout_fields, resolve_layout
from wavalign.toy.cache import fingerprint, foreign_assets_dir
from wavalign.toy.codec import ToyCodec
from wavalign.toy.metrics import ToyScorer
from wavalign.toy.model import ReferenceFor, build_tiny_model, generate, warm_start
from wavalign.toy.rows import ToyEncoder, toy_corpus
from wavalign.toy.task import all_questions, split_questions, vocabulary_words
from wavalign.toy.tokenizer import build_tokenizer

SAMPLING_TEMPERATURE = 0.7  # the method's rollout temperature, for the reported sampled accuracy


@dataclass(frozen=True)
class ToyAssets:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def data_file(self, split: str, suffix: str = ".parquet") -> Path:
        return self.root / "data" / f"{split}{suffix}"

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.root / "warm_start.json").read_text())


def toy_codec(toy: ToyConfig, num_codes: int) -> ToyCodec:
    return ToyCodec(vocabulary_words(), num_codes, toy.seed, toy.min_word_tokens, toy.max_word_tokens)


def toy_scorer(layout: SpeechLayout, toy: ToyConfig, tokenizer) -> ToyScorer:
    """The toy metrics for a model's tokenizer (any HF tokenizer with `decode`)."""
    return ToyScorer(
        layout, toy_codec(toy, layout.num_speech_tokens), lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    )


def ensure_toy_assets(
    toy: ToyConfig, layout: LayoutConfig, force: bool = False, log: Callable[[str], None] = print
) -> ToyAssets:
    """The cached assets for this config, built first if missing or stale."""
    root = Path(toy.assets_dir)
    if problem := foreign_assets_dir(toy):
        raise ValueError(problem)
    root.parent.mkdir(parents=True, exist_ok=True)
    key = fingerprint(toy, layout)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder waits, then finds the cache
        stamp = root / "fingerprint"
        if not force and stamp.exists() and stamp.read_text().strip() == key:
            return ToyAssets(root)
        log(f"toy assets: building into {root} (cache key {key}; a few minutes on 2 CPU cores)")
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            _build(staging, toy, layout, log)
            (staging / "fingerprint").write_text(key + "\n")
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared with Ray workers
            if problem := foreign_assets_dir(toy):  # appeared while we built
                raise ValueError(problem)
            shutil.rmtree(root, ignore_errors=True)  # an outdated cache of ours, or an empty folder
            staging.rename(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"toy assets: ready in {root}")
    return ToyAssets(root)


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


def _build(out: Path, toy: ToyConfig, layout_cfg: LayoutConfig, log: Callable[[str], None]) -> None:
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
