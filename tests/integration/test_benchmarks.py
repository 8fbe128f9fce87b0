"""Each benchmark script runs end to end in a tiny configuration and prints its ratio line: they
cannot rot unseen. No timing is asserted (numbers on a shared 2-core machine mean nothing here);
the README's figures come from full runs of the same scripts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import background
from tests.background import Background
from tests.integration.conftest import ROOT
from wavalign.speech.synthesize import available

BENCHMARKS = [
    pytest.param(
        ["benchmarks/learner.py", "--prompts", "2", "--repeats", "1"], "learner / bare torch tokens/s = ", id="learner"
    ),
    pytest.param(
        ["benchmarks/rollout.py", "--prompts", "4", "--repeats", "1", "--sync-hidden", "512", "--sync-layers", "4"],
        "pool / bare tokens/s = ",
        id="rollout",
    ),
]
# benchmarks/step.py measures its pipeline side from the main job (test_pipeline.py): the reference
# loop alone runs here.


def start_alone(command: list[str]):
    """The benchmark on a Ray instance of its own (as its usage runs it), started in the background."""

    def start(toy_assets, folder: Path) -> Background:
        script = [sys.executable, *command, "--set", f"toy.assets_dir={toy_assets.root}"]
        return Background.start(script, folder / "rollout-benchmark.log", ROOT, without=("RAY_ADDRESS",))

    return start


# In a one-process session the rollout benchmark's minute and a half (three engine starts) overlaps
# with the tests that go first (tests/background.py); otherwise it runs on the session's cluster, as
# the learner's does.
PRESTART = {"test_benchmark_runs_and_prints_its_ratio[rollout]": start_alone(BENCHMARKS[1].values[0])}


@pytest.mark.parametrize("command,ratio_line", BENCHMARKS)
def test_benchmark_runs_and_prints_its_ratio(command, ratio_line, toy_assets, address, request):
    if started := background.take(request.node.name):
        code, out = started.finish(900)
        assert code == 0, out[-6000:]
        assert_ratio_line(out, ratio_line)
    else:
        out = run_benchmark([*command, "--set", f"toy.assets_dir={toy_assets.root}"], ratio_line, address)
    if "--sync-hidden" in command:
        # The learner ships the weights itself: the driver's memory does not grow with the model
        # (the larger model's 68 MiB would show whole if they went through it).
        found = re.findall(r"during the (\w+) model's syncs: ([0-9.]+) MiB \(its weights: ([0-9.]+)", out)
        growth = {label: (float(grown), float(weights)) for label, grown, weights in found}
        (grown, weights) = growth["larger"]
        assert weights > 50 and grown < 0.2 * weights, out[-2000:]


def run_benchmark(command: list[str], ratio_line: str, address: str) -> str:
    """Run a benchmark script on the session cluster: its output, whose ratio line has ratios > 0."""
    out = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_ratio_line(out.stdout, ratio_line)
    return out.stdout


def assert_ratio_line(output: str, ratio_line: str) -> None:
    """One line starting with ratio_line, whose ratios are all > 0."""
    (line,) = [line for line in output.splitlines() if line.startswith(ratio_line)]
    ratios = [float(x) for x in re.findall(r"(?:= |up )([0-9]+\.[0-9]+)x?", line)]
    assert ratios and all(r > 0 for r in ratios), line


def test_a_pipeline_run_that_is_not_one_is_a_one_line_error(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "pipeline.yaml").read_text())
    for run_dir, expected in (
        (tmp_path / "nope", "config.yaml not found"),
        (tmp_path, "no metrics.parquet (not a run directory)"),
    ):
        out = subprocess.run(
            [sys.executable, "benchmarks/step.py", "--pipeline-run", str(run_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and expected in lines[0], out.stderr


@pytest.mark.skipif(not available("flite"), reason="flite is not installed (scripts/install.sh)")
def test_the_asr_benchmark_runs_and_prints_its_ratio():
    out = subprocess.run(
        [sys.executable, "benchmarks/asr.py", "--utterances", "2", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_ratio_line(out.stdout, "asr_consistency / bare recogniser responses/s = ")


@pytest.mark.skipif(not available("flite"), reason="flite is not installed (scripts/install.sh)")
def test_the_prepare_benchmark_runs_and_prints_its_ratio(toy_assets, address):
    command = ["benchmarks/prepare.py", "--utterances", "4", "--rows", "8", "--workers", "1"]
    run_benchmark([*command, "--set", f"toy.assets_dir={toy_assets.root}"], "prepare job / bare tokenizer", address)
