"""The ablation command end to end, shrunk: one arm (full-token RL, whose fixed λ 1 shows that the
arm's settings reach its run), one seed, two steps, on the test session's cluster; it writes the
results and the curves. (The arms' settings: tests/unit/test_ablate.py.) Its run is also the one
that trains on real speech prepared by `python -m wavalign.prepare` (the session's prepared_speech),
scored with the asr_consistency reward beside toy_answer, decoding responses with the fitted codebook."""

import math
import subprocess
import sys

import pyarrow.parquet as pq

from tests.integration.conftest import ROOT
from tests.integration.pipeline_jobs import ONE_THREAD, set_args


def test_ablation_command_writes_the_table_and_the_curves(tmp_path, address, toy_assets, prepared_speech):
    out = tmp_path / "ablation"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "driver.ablate",
            "--task",
            "default",
            "--arms",
            "a",
            "--seeds",
            "7",
            "--steps",
            "2",
            "--out",
            str(out),
            "--address",
            address,
            "--set",
            f"toy.assets_dir={toy_assets.root}",
            "--set",
            "train.eval_every=0",  # (the eval split's summaries: tests/unit/test_ablate.py)
            *set_args(ONE_THREAD),
            *set_args(prepared_speech.run_sets()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["arm"], r["seed"]) for r in results] == [("full_token_rl", 7)]
    # (a WER has no upper bound: speech may hold more words than the text it is compared with)
    assert all(0 <= r["rollout_semantic_accuracy"] <= 1 and 0 <= r["rollout_acoustic_wer"] < math.inf for r in results)
    assert results[0]["lambda_mean"] == 1.0  # the arm's fixed λ, not the default adaptive one (≤ lambda_max 0.8)
    table = (out / "results.md").read_text()
    assert "| warm start (step 1) | - |" in table and "| full_token_rl | 1 |" in table
    curves = {p.stem for p in out.glob("curves_*.png")}
    assert {"curves_rollout_semantic_accuracy", "curves_rollout_acoustic_wer", "curves_lambda"} <= curves
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.glob("*.png"))
    # each run is a complete pipeline run of its own
    for r in results:
        assert [row["step"] for row in pq.read_table(f"{r['run_dir']}/metrics.parquet").to_pylist()] == [1, 2]
    # trained on the prepared rows, the asr_consistency reward in rollouts.parquet, weighted in
    rollouts = pq.read_table(f"{results[0]['run_dir']}/rollouts.parquet").to_pylist()
    prepared_ids = {r["id"] for shard in prepared_speech.shards for r in pq.read_table(shard).to_pylist()}
    assert len(rollouts) == 16 and {r["prompt_id"] for r in rollouts} <= prepared_ids
    assert all(1.0 <= r["reward_asr_consistency"] <= 5.0 for r in rollouts)
    assert all(
        math.isclose(r["reward"], 0.5 * (r["reward_toy_answer"] + r["reward_asr_consistency"])) for r in rollouts
    )
