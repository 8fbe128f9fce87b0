"""Two pipeline steps on one GPU (launch.py, its own local Ray cluster): vLLM rollout worker and
DeepSpeed learner share the GPU (0.4 each), the 0.5B-shaped policy, weight sync through the object
store (the mode launch.py's loop drives so far)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.gpu.conftest import ROOT, policy_sets


@pytest.mark.timeout(1800)
def test_two_steps_on_one_gpu(policy_05b, toy_assets, tmp_path):
    sets = policy_sets(
        policy_05b,
        toy_assets,
        **{
            "rollout.gpus_per_worker": "0.4",
            "learner.gpus_per_worker": "0.4",
            "rollout.gpu_memory_utilization": "0.3",
            "rollout.weight_transfer": "object_store",
            "rollout.max_new_tokens": "64",
            "learner.zero_stage": "2",
            "run.steps": "2",
            "run.name": "gpu",
            "run.output_dir": str(tmp_path),
            "train.eval_every": "0",
            "train.checkpoint_every": "0",
        },
    )
    command = [sys.executable, "launch.py", "--config", "pipeline.yaml", *(arg for s in sets for arg in ("--set", s))]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1700)
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"

    import pyarrow.parquet as pq

    (run_dir,) = tmp_path.glob("gpu-*")
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert len(rows) == 2
    assert all(math.isfinite(r["loss"]) and r["response_tokens"] > 0 for r in rows)
    assert rows[-1]["policy_version"] >= 1
    for r in rows:  # the step split, for the note (pytest -s)
        print(
            {
                k: round(r[k], 3)
                for k in (
                    "step_seconds",
                    "generation_seconds",
                    "reward_wait_seconds",
                    "learn_seconds",
                    "sync_seconds",
                    "rollout_tokens_per_s",
                )
            }
        )
