"""The three benchmarks on one GPU, on the 0.5B-shaped random model (toy vocabulary). They have no
GPU flags of their own: the GPU settings go in as --set overrides. Each prints its ratio; the test
checks that it ran to its summary line (pytest -s shows the numbers for the issue's note)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.gpu.conftest import HIDDEN, LAYERS, ROOT

GPU_SETS = [
    "model.dtype=bfloat16",
    "learner.precision=bfloat16",
    "rollout.gpus_per_worker=0.4",
    "learner.gpus_per_worker=0.4",
    "rollout.gpu_memory_utilization=0.3",
    "rollout.weight_transfer=object_store",
    f"toy.assets_dir={ROOT / '.assets' / 'toy'}",
]
BENCHMARKS = [
    pytest.param(
        [
            "benchmarks/rollout.py",
            "--prompts",
            "64",
            "--repeats",
            "2",
            "--sync-hidden",
            str(HIDDEN),
            "--sync-layers",
            str(LAYERS),
        ],
        "pool / bare tokens/s",
        id="rollout",
    ),
    pytest.param(
        ["benchmarks/learner.py", "--prompts", "8", "--repeats", "3", "--hidden", str(HIDDEN), "--layers", str(LAYERS)],
        "learner / bare torch tokens/s",
        id="learner",
    ),
    pytest.param(
        ["benchmarks/step.py", "--steps", "4", "--hidden", str(HIDDEN), "--layers", str(LAYERS)], "speed-up", id="step"
    ),
]


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("command,summary", BENCHMARKS)
def test_benchmark_runs_on_gpu(command, summary, toy_assets):
    sets = [arg for s in GPU_SETS for arg in ("--set", s)]
    out = subprocess.run([sys.executable, *command, *sets], cwd=ROOT, capture_output=True, text=True, timeout=2300)
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    assert summary in out.stdout
    print(out.stdout[-3000:])
