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

    python -m learner.dpo_pairs --from-rollouts runs/<run>/rollouts.parquet --data train.jsonl --output pairs.jsonl

builds token-id pairs for offline DPO (`algorithm.dpo_pairs: offline`) from a run's scored samples:
each group (a step's G responses to one prompt) gives best vs worst by reward with the same rule; the
output rows are the data's rows (`--data`, matched by id) with the chosen response as
`reference_token_ids` (`--chosen-source sft_target`: the row's own reference) and the rejected one as
`rejected_token_ids`; a chosen response that does not end with eos (cut at the token limit) gives no
pair. Pure module: standard library only (pyarrow is imported to read Parquet; the output is written
atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wavalign.atomic import write_text_atomic


@dataclass(frozen=True)
class ScoreRule:
    mode: str = "sum"  # sum | semantic | paralinguistic | weighted
    w_sem: float = 1.0
    w_para: float = 1.0

    def score(self, candidate: Any) -> float | None:
        """The candidate's scalar score, or None when it has none (not an object, no numeric scores)."""
        scores = candidate.get("gemini_score") if isinstance(candidate, dict) else None
        if not isinstance(scores, dict):
            return None
        sem, para = scores.get("semantic_score"), scores.get("paralinguistic_score")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (sem, para)):
            return None
        return {
            "sum": sem + para,
            "semantic": sem,
            "paralinguistic": para,
            "weighted": self.w_sem * sem + self.w_para * para,
        }[self.mode]


def best_and_worst(scored: Sequence[tuple[Any, float]], min_gap: float) -> tuple[Any, Any, float] | None:
    """The selection rule (method §8.1), on (candidate, score) pairs: (best, worst, gap), or None with
    fewer than 2 candidates or a gap below min_gap (all ties included). Ties go to the first.

    >>> best_and_worst([("a", 3.0), ("b", 5.0), ("c", 1.0), ("d", 5.0)], min_gap=1.0)
    ('b', 'c', 4.0)
    >>> best_and_worst([("a", 3.0), ("b", 3.5)], min_gap=1.0) is None
    True
    """
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda x: x[1])  # max/min keep the first of ties
    worst = min(scored, key=lambda x: x[1])
    gap = best[1] - worst[1]
    return None if gap < min_gap else (best[0], worst[0], gap)


class PairInputError(ValueError):
    """An input the builder cannot read; the message names the file and line."""


def sample_problem(sample: Any) -> str | None:
    """Why a sample cannot give a pair (it is skipped and named), or None."""
    if not isinstance(sample, dict):
        return f"expected an object, got {type(sample).__name__}"
    if not isinstance(sample.get("output"), dict):
        return "field 'output': expected an object of candidates"
    return None


def build_pair(
    sample: dict[str, Any], rule: ScoreRule, min_gap: float, chosen_source: str = "best_output"
) -> dict | None:
    """The pair for one sample, or None when it has < 2 scored candidates or too small a gap."""
    if sample_problem(sample):
        return None
    scored = [((key, c, score), score) for key, c in sample["output"].items() if (score := rule.score(c)) is not None]
    chosen = best_and_worst(scored, min_gap)
    if chosen is None:
        return None
    best, worst, gap = chosen  # (key, candidate, score) each
    pair = {k: v for k, v in sample.items() if k != "output"}
    pair["orig_sft_target_text"] = sample.get("sft_target_text")
    pair["orig_sft_target_audio"] = sample.get("sft_target_audio")
    if chosen_source == "best_output":
        pair["sft_target_text"], pair["sft_target_audio"] = best[1].get("output-text"), best[1].get("output-audio")
    pair["rejected_text"], pair["rejected_audio"] = worst[1].get("output-text"), worst[1].get("output-audio")
    pair.update(chosen_score=best[2], rejected_score=worst[2], score_gap=gap, chosen_key=best[0], rejected_key=worst[0])
    return pair


def build_pairs(
    samples: list[dict[str, Any]],
    rule: ScoreRule,
    min_gap: float = 1.0,
    top_k: int | None = None,
    chosen_source: str = "best_output",
) -> list[dict[str, Any]]:
    pairs = [p for s in samples if (p := build_pair(s, rule, min_gap, chosen_source)) is not None]
    if top_k is not None:
        pairs = sorted(pairs, key=lambda p: -p["score_gap"])[:top_k]
    return pairs


def pairs_from_rollouts(
    groups: dict[tuple[int, str], list[dict]],
    rows: dict[str, dict],
    min_gap: float,
    chosen_source: str,
    eos_id: int | None,
) -> tuple[list[dict], int]:
    """Pair rows from scored groups ((step, prompt id) -> their rollouts rows: response_token_ids,
    reward, text); returns (pairs, groups without a pair). A chosen response must end with eos_id."""
    pairs, without = [], 0
    for (step, prompt_id), samples in sorted(groups.items()):
        row = rows.get(prompt_id)
        picked = best_and_worst([(s, s["reward"]) for s in samples], min_gap) if row is not None else None
        if picked is None or (
            chosen_source == "best_output" and eos_id is not None and picked[0]["response_token_ids"][-1:] != [eos_id]
        ):
            without += 1
            continue
        best, worst, gap = picked
        pair = {
            **row,
            "id": f"{prompt_id}@{step}",
            "rejected_token_ids": list(worst["response_token_ids"]),
            "chosen_score": best["reward"],
            "rejected_score": worst["reward"],
            "score_gap": gap,
        }
        if chosen_source == "best_output":
            pair.update(
                reference_token_ids=list(best["response_token_ids"]),
                sft_target_text=best["text"],
                orig_sft_target_text=row.get("sft_target_text"),
            )
        pairs.append(pair)
    return pairs, without


def read_rollout_groups(path: Path) -> dict[tuple[int, str], list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(
            path, columns=["step", "prompt_id", "sample_index", "reward", "response_token_ids", "text"]
        )
    except (pa.ArrowException, OSError) as err:
        raise PairInputError(f"{path}: not a run's rollouts.parquet ({' '.join(str(err).split())[:200]})") from None
    groups: dict[tuple[int, str], list[dict]] = {}
    for record in table.to_pylist():
        groups.setdefault((record["step"], record["prompt_id"]), []).append(record)
    return {key: sorted(samples, key=lambda s: s["sample_index"]) for key, samples in groups.items()}


def read_samples(path: Path) -> list[tuple[int, Any]]:
    """(line or item number, sample) of a JSON list or a JSONL file; unreadable input names the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PairInputError(f"{path}: cannot read ({err})") from None
    if path.suffix == ".json":
        try:
            samples = json.loads(text)
        except json.JSONDecodeError as err:
            raise PairInputError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(samples, list):
            raise PairInputError(f"{path}: expected a JSON list of samples, got {type(samples).__name__}")
        return list(enumerate(samples, 1))
    numbered = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise PairInputError(f"{path}: line {number}: not valid JSON ({err})") from None
    return numbered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learner.dpo_pairs", description="Build DPO pairs (best vs worst).")
    parser.add_argument("--input", type=Path, help="scored samples (JSON list or JSONL)")
    parser.add_argument("--from-rollouts", type=Path, help="a run's rollouts.parquet instead of --input")
    parser.add_argument("--data", type=Path, help="with --from-rollouts: the train file those rollouts came from")
    parser.add_argument(
        "--eos-id", type=int, default=None, help="with --from-rollouts: a chosen response must end with it"
    )
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--score", default="sum", choices=["sum", "semantic", "paralinguistic", "weighted"])
    parser.add_argument("--w-sem", type=float, default=1.0)
    parser.add_argument("--w-para", type=float, default=1.0)
    parser.add_argument("--min-score-gap", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--chosen-source", default="best_output", choices=["best_output", "sft_target"])
    args = parser.parse_args(argv)
    if (args.input is None) == (args.from_rollouts is None) or (args.from_rollouts is not None and args.data is None):
        parser.error("give --input, or --from-rollouts with --data")
    if args.from_rollouts is not None:
        return _from_rollouts_main(args)
    try:
        numbered = read_samples(args.input)
    except PairInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    skipped = [(number, why) for number, sample in numbered if (why := sample_problem(sample))]
    for number, why in skipped:
        print(f"skipped {args.input}: line {number}: {why}", file=sys.stderr)
    samples = [sample for _, sample in numbered]
    pairs = build_pairs(
        samples, ScoreRule(args.score, args.w_sem, args.w_para), args.min_score_gap, args.top_k, args.chosen_source
    )
    write_text_atomic(args.output, "".join(json.dumps(p) + "\n" for p in pairs))
    print(f"{len(pairs)} pairs from {len(samples)} samples ({len(skipped)} skipped) -> {args.output}")
    return 0


def _from_rollouts_main(args: argparse.Namespace) -> int:
    from wavalign.data import DataError, raw_records

    try:
        groups = read_rollout_groups(args.from_rollouts)
        rows = dict(raw_records(args.data))
    except (PairInputError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pairs, without = pairs_from_rollouts(groups, rows, args.min_score_gap, args.chosen_source, args.eos_id)
    if args.top_k is not None:
        pairs = sorted(pairs, key=lambda p: -p["score_gap"])[: args.top_k]
    write_text_atomic(args.output, "".join(json.dumps(p) + "\n" for p in pairs))
    print(f"{len(pairs)} pairs from {len(groups)} groups ({without} without a pair) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
