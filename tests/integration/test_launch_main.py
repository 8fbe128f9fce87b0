"""The README's main command runs the training loop end to end on the embedded default (in a
temporary run dir) and the toy reward rises over the run."""

import statistics
import subprocess
import sys

import pyarrow.parquet as pq
import yaml

from tests.integration.conftest import ROOT


def test_main_job_trains_and_the_toy_reward_rises(tmp_path, toy_assets):
    runs = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "launch.py", "--config", "pipeline.yaml", "--set", f"run.output_dir={runs}",
         "--set", f"toy.assets_dir={toy_assets.root}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["run"]["output_dir"] == str(runs)
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    steps = cfg["run"]["steps"]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    quarter = max(1, steps // 4)
    first = statistics.mean(r["reward_mean"] for r in rows[:quarter])
    last = statistics.mean(r["reward_mean"] for r in rows[-quarter:])
    assert last > first, f"toy reward did not rise: first quarter {first:.3f}, last quarter {last:.3f}"
    assert f"step {steps}/{steps}" in out.stdout and "done:" in out.stdout
