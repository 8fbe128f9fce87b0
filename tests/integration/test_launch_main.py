"""The README's main command runs end to end on the embedded default (in a temporary run dir)."""

import json
import subprocess
import sys

import yaml

from tests.integration.conftest import ROOT


def test_main_job_runs_and_writes_its_run_dir(tmp_path, toy_assets):
    runs = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "launch.py", "--config", "pipeline.yaml", "--set", f"run.output_dir={runs}",
         "--set", f"toy.assets_dir={toy_assets.root}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["output_dir"] == str(runs)
    summary = json.loads((run_dir / "eval.json").read_text())
    assert 0 < summary["semantic_accuracy"] < 1 and summary["well_formed_frac"] > 0.8
    assert "not implemented yet" in out.stdout
