"""The metrics row of one step (metrics.parquet, TensorBoard, the dashboard) and its progress line."""

from __future__ import annotations

import math
from collections.abc import Sequence

from learner.diagnostics import MISMATCH_KEYS
from learner.mixing import LambdaStep

# Columns every row has (NaN where a step did not compute one), so the Parquet schema is stable.
LEARNER_KEYS = (
    "rl_loss",
    "sft_loss",
    "loss",
    "text_entropy",
    "speech_entropy",
    "total_entropy",
    "kl_text",
    "kl_speech",
    "clip_frac",
    "staleness",
    "grad_norm",
    "grad_norm_text",
    "grad_norm_speech",
    "lr",
    "skipped",
    "nonfinite_loss",
    *MISMATCH_KEYS,
)
LAMBDA_KEYS = ("lambda_raw", "gate_reward", "gate_info", "reward_max_mean", "reward_var_mean", "zero_var_group_frac")


def step_metrics(
    *,
    step: int,
    version: int,
    lambdas: Sequence[LambdaStep],
    reward_aggregates: dict[str, float],
    learned: dict[str, float],
    timings: dict[str, float],
    response_tokens: int,
    workers: dict[str, int],
) -> dict:
    row: dict = {"step": step, "policy_version": version, **reward_aggregates}
    # several λ only with lambda_scope=per_rank: the row shows their mean
    row["lambda"] = sum(s.lam for s in lambdas) / len(lambdas)
    for key in LAMBDA_KEYS:
        row[key] = sum(getattr(s, key) for s in lambdas) / len(lambdas)
    for key in LEARNER_KEYS:
        row[key] = float(learned.get(key, math.nan))
    row.update({key: float(value) for key, value in learned.items() if key.startswith("dpo_")})  # DPO runs
    row["response_tokens"] = response_tokens
    row["rollout_tokens_per_s"] = response_tokens / max(timings["generation_seconds"], 1e-9)
    row.update(timings)
    row.update({f"{pool}_workers": count for pool, count in workers.items()})
    return row


def finite_numbers(row: dict) -> dict[str, float]:
    """The row's finite numeric values (what TensorBoard and the dashboard can plot)."""
    return {
        key: float(value)
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def progress_line(row: dict, total_steps: int, seconds_per_step: float) -> str:
    remaining = (total_steps - row["step"]) * seconds_per_step
    eta = f"{int(remaining // 60)}m{int(remaining % 60):02d}s"
    if "dpo_loss" in row:
        objective = f"dpo {row['dpo_loss']:.3f} (accuracy {row['dpo_accuracy']:.2f}, {row['dpo_pairs']:.0f} pairs)"
    else:
        objective = (
            f"λ {row['lambda']:.3f} | loss {row['loss']:.3f} (rl {row['rl_loss']:.3f}, sft {row['sft_loss']:.3f})"
        )
    return (
        f"step {row['step']}/{total_steps} | reward {row['reward_mean']:.2f} ± {row['reward_std']:.2f} | {objective} "
        f"| {row['rollout_tokens_per_s']:.0f} tok/s | sync {row['sync_seconds']:.2f}s "
        f"| step {row['step_seconds']:.1f}s | ETA {eta}"
    )
