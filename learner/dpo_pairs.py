"""DPO pair builder (method.md §8.1): best vs worst scored candidate per sample.

    python -m learner.dpo_pairs --input scored.jsonl --output pairs.jsonl [--score sum] [--min-score-gap 1.0]

Input (JSON list or JSONL): samples with `output`, a dict of candidates
`{key: {"output-text", "output-audio", "gemini_score": {"semantic_score", "paralinguistic_score"}}}`.
A candidate's scalar score is `sum` (semantic + paralinguistic, the default), `semantic`,
`paralinguistic` or `weighted` (w_sem x sem + w_para x para). Candidates missing a numeric score are
dropped; samples with fewer than 2 are skipped. Chosen = the best (ties: the first), or the sample's
own reference (`--chosen-source sft_target`); rejected = the worst. Pairs whose gap is below
`--min-score-gap` (1.0) are dropped (so are all-tie samples); `--top-k` keeps the widest gaps.

Output JSONL, one pair per line: the sample's fields without `output`, the chosen side as
`sft_target_text/audio`, the rejected side as `rejected_text/audio`, and `chosen_score`,
`rejected_score`, `score_gap`, `chosen_key`, `rejected_key`, `orig_sft_target_text/audio`.
Pure module: standard library only (the output is written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wavalign.atomic import write_text_atomic


@dataclass(frozen=True)
class ScoreRule:
    mode: str = "sum"  # sum | semantic | paralinguistic | weighted
    w_sem: float = 1.0
    w_para: float = 1.0

    def score(self, candidate: dict[str, Any]) -> float | None:
        scores = candidate.get("gemini_score") or {}
        sem, para = scores.get("semantic_score"), scores.get("paralinguistic_score")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (sem, para)):
            return None
        return {"sum": sem + para, "semantic": sem, "paralinguistic": para, "weighted": self.w_sem * sem + self.w_para * para}[self.mode]


def build_pair(sample: dict[str, Any], rule: ScoreRule, min_gap: float, chosen_source: str = "best_output") -> dict | None:
    """The pair for one sample, or None when it has < 2 scored candidates or too small a gap."""
    scored = [(key, c, rule.score(c)) for key, c in (sample.get("output") or {}).items()]
    scored = [(key, c, s) for key, c, s in scored if s is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda x: x[2])  # max/min keep the first of ties
    worst = min(scored, key=lambda x: x[2])
    gap = best[2] - worst[2]
    if gap < min_gap:
        return None
    pair = {k: v for k, v in sample.items() if k != "output"}
    pair["orig_sft_target_text"] = sample.get("sft_target_text")
    pair["orig_sft_target_audio"] = sample.get("sft_target_audio")
    if chosen_source == "best_output":
        pair["sft_target_text"], pair["sft_target_audio"] = best[1].get("output-text"), best[1].get("output-audio")
    pair["rejected_text"], pair["rejected_audio"] = worst[1].get("output-text"), worst[1].get("output-audio")
    pair.update(chosen_score=best[2], rejected_score=worst[2], score_gap=gap, chosen_key=best[0], rejected_key=worst[0])
    return pair


def build_pairs(samples: list[dict[str, Any]], rule: ScoreRule, min_gap: float = 1.0, top_k: int | None = None,
                chosen_source: str = "best_output") -> list[dict[str, Any]]:
    pairs = [p for s in samples if (p := build_pair(s, rule, min_gap, chosen_source)) is not None]
    if top_k is not None:
        pairs = sorted(pairs, key=lambda p: -p["score_gap"])[:top_k]
    return pairs


def read_samples(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learner.dpo_pairs", description="Build DPO pairs (best vs worst).")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--score", default="sum", choices=["sum", "semantic", "paralinguistic", "weighted"])
    parser.add_argument("--w-sem", type=float, default=1.0)
    parser.add_argument("--w-para", type=float, default=1.0)
    parser.add_argument("--min-score-gap", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--chosen-source", default="best_output", choices=["best_output", "sft_target"])
    args = parser.parse_args(argv)
    samples = read_samples(args.input)
    pairs = build_pairs(samples, ScoreRule(args.score, args.w_sem, args.w_para), args.min_score_gap, args.top_k, args.chosen_source)
    write_text_atomic(args.output, "".join(json.dumps(p) + "\n" for p in pairs))
    print(f"{len(pairs)} pairs from {len(samples)} samples -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
