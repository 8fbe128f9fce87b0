"""The ablation's summaries on hand-made metric rows (the runs themselves: tests/integration/test_ablate.py)."""

from pathlib import Path

import pytest

from driver.ablate import ARMS, paired_differences, results_table, smoothed, summarise, warm_start_row
from driver.heldout import HeldOut

NAN = float("nan")


def rows(accuracies, lambdas, eval_at=None):
    out = []
    for step, (acc, lam) in enumerate(zip(accuracies, lambdas), 1):
        row = {
            "step": step,
            "rollout_semantic_accuracy": acc,
            "rollout_acoustic_wer": 0.1,
            "rollout_speech_js_divergence": 0.2,
            "reward_mean": 2.0 + acc,
            "lambda": lam,
            "grad_norm_text": NAN,
            "grad_norm_speech": None,
        }
        row["eval_semantic_accuracy"] = 0.5 if step == eval_at else None
        out.append(row)
    return out


def test_summarise_last_quarter_last_eval_and_run_means():
    result = summarise(
        rows([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.8], [0.1] * 4 + [0.3] * 4, eval_at=8), "d", 3, Path("r")
    )
    assert result["arm"] == "wavalign" and result["seed"] == 3
    assert result["rollout_semantic_accuracy"] == pytest.approx(0.6)  # steps 7-8
    assert result["reward_mean"] == pytest.approx(2.6)
    assert result["eval_semantic_accuracy"] == 0.5 and result["eval_acoustic_wer"] is None  # not recorded
    assert result["lambda_mean"] == pytest.approx(0.2)
    assert result["grad_norm_text"] is None and result["grad_norm_speech"] is None  # NaN / missing only
    assert result["eval_start_semantic_accuracy"] is None and result["eval_gain"] is None  # no eval_start.json


def test_summarise_gain_over_the_runs_own_start(tmp_path):
    (tmp_path / "eval_start.json").write_text(HeldOut(0, 0.125, 0.02, {"p1": 0.0, "p2": 0.25}, 8).to_json())
    result = summarise(rows([0.5] * 4, [0.2] * 4, eval_at=4), "e", 1, tmp_path)
    assert result["eval_start_semantic_accuracy"] == 0.125 and result["eval_start_acoustic_wer"] == 0.02
    assert result["eval_gain"] == pytest.approx(0.375)  # 0.5 at the last evaluation
    start = warm_start_row([rows([0.5] * 4, [0.2] * 4)], [result])
    assert start["eval_semantic_accuracy"] == 0.125 and start["eval_acoustic_wer"] == 0.02


def test_paired_differences_per_seed():
    def result(arm, seed, accuracy, wer):
        return {
            "arm": arm,
            "seed": seed,
            "eval_semantic_accuracy": accuracy,
            "eval_acoustic_wer": wer,
            "rollout_semantic_accuracy": None,
            "rollout_acoustic_wer": 0.0,
        }

    results = [
        result("wavalign", 1, 0.5, 0.1),
        result("wavalign", 2, 0.25, 0.1),
        result("text_rl_fixed", 1, 0.25, 0.0),
        result("text_rl_fixed", 2, 0.5, 0.0),
        result("sft_only", 1, 0.25, 0.1),
    ]
    lines = paired_differences(results).splitlines()
    assert len(lines) == 4  # header, rule, d-c, d-e (no arm b or a ran)
    assert lines[2].startswith("| d-c (wavalign - text_rl_fixed) | 2 | 0.000 ± 0.354 (+0.250, -0.250) | 0.100 ± 0.000")
    assert lines[2].endswith("| - | 0.000 ± 0.000 (+0.000, +0.000) |")  # None on both sides: no difference
    assert lines[3].startswith("| d-e (wavalign - sft_only) | 1 | 0.250 (+0.250) | 0.000 (+0.000) |")
    assert paired_differences([result("wavalign", 1, 0.5, 0.1)]) == ""


def test_results_table_mean_and_spread_over_seeds():
    results = [summarise(rows([a] * 4, [1.0] * 4), "a", seed, Path(str(seed))) for seed, a in ((1, 0.2), (2, 0.4))]
    start = warm_start_row([rows([0.1] * 4, [1.0] * 4), rows([0.3] * 4, [1.0] * 4)])
    table = results_table(results, start).splitlines()
    assert table[2].startswith("| warm start (step 1) | - | 0.200 |")
    assert table[3].startswith("| full_token_rl | 2 | 0.300 ± 0.141 | 0.100 ± 0.000 |")
    assert len(table) == 4


def test_smoothed_is_a_trailing_mean():
    assert smoothed([(1, 0.0), (2, 3.0), (3, 6.0), (4, 0.0)], 2) == [(1, 0.0), (2, 1.5), (3, 4.5), (4, 3.0)]


def test_arms_are_the_papers_five():
    assert [name for name, _ in ARMS.values()] == ["full_token_rl", "text_rl", "text_rl_fixed", "wavalign", "sft_only"]
