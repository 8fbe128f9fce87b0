"""The pipeline end to end (launch.py as a job on the session's Ray cluster, the real stack):
outputs, dashboard metrics, exact resume, a killed rollout worker, live scaling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import ROOT

STEP_COLUMNS = (
    "step policy_version reward_mean reward_std reward_max_mean zero_var_group_frac lambda_raw lambda gate_reward "
    "gate_info rl_loss sft_loss loss text_entropy speech_entropy grad_norm_text grad_norm_speech rollout_tokens_per_s "
    "sync_seconds step_seconds eval_semantic_accuracy eval_acoustic_wer eval_speech_js_divergence "
    "rollout_semantic_accuracy rollout_acoustic_wer rollout_speech_js_divergence"
).split()
ROLLOUT_COLUMNS = (
    "step prompt_id group_index sample_index policy_version reward advantage n_text_tokens n_speech_tokens text "
    "response_token_ids"
).split()
# What must not depend on whether a run stopped and resumed (everything but timings).
DETERMINED = (
    "policy_version reward_mean reward_std reward_max_mean zero_var_group_frac lambda_raw lambda gate_reward gate_info "
    "rl_loss sft_loss loss text_entropy speech_entropy grad_norm grad_norm_text grad_norm_speech lr"
).split()


class Job:
    """launch.py in a subprocess, joined to the session's cluster, its output in a log file."""

    def __init__(self, root: Path, name: str, address: str, assets, *extra: str, resume: Path | None = None) -> None:
        sets = {"run.name": name, "run.output_dir": str(root), "run.steps": "4", "toy.assets_dir": str(assets.root),
                "train.eval_every": "2", "train.checkpoint_every": "2", "learner.grad_norm_every": "1"}
        args = ["--resume", str(resume)] if resume else ["--config", "pipeline.yaml"]
        for key, value in sets.items():
            if not resume:  # a resumed run reads its own config.yaml
                args += ["--set", f"{key}={value}"]
        self.log_path = root / f"{name}{'-resumed' if resume else ''}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "launch.py", *args, "--address", address, *extra],
                                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float = 600) -> str:
        self.process.wait(timeout)
        output = self.log_path.read_text()
        assert self.process.returncode == 0, output[-4000:]
        return output


def run_dir_of(root: Path, name: str) -> Path:
    (run_dir,) = root.glob(f"{name}-*")
    return run_dir


def metrics_rows(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "metrics.parquet").to_pylist()


def wait_for_step(run_dir_glob, step: int, job: Job, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.running(), "the job ended early: " + job.log_path.read_text()[-3000:]
        found = list(run_dir_glob())
        if found and (found[0] / "metrics.parquet").exists() and len(metrics_rows(found[0])) >= step:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, address, toy_assets, metrics_port):
    """An uninterrupted 4-step run; while it goes, the cluster's metrics endpoint is watched."""
    root = tmp_path_factory.mktemp("straight")
    job = Job(root, "straight", address, toy_assets)
    seen: list[str] = []

    def watch():
        while job.running() and not seen:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
                seen.extend(line for line in body.splitlines() if line.startswith("ray_wavalign_reward_mean{") and 'run="straight"' in line)
            except OSError:
                pass
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = job.finish()
    watcher.join(30)
    return run_dir_of(root, "straight"), output, seen


def test_a_run_writes_metrics_rollouts_tensorboard_and_checkpoints(straight, cfg):
    run_dir, output, _ = straight
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["policy_version"] for r in rows] == [1, 2, 3, 4]
    assert set(STEP_COLUMNS) <= set(rows[0])
    assert rows[1]["eval_semantic_accuracy"] is not None and rows[0]["eval_semantic_accuracy"] is None  # every 2 steps
    assert all(0 <= r["lambda"] <= cfg.algorithm.lambda_max and r["grad_norm_text"] > 0 for r in rows)
    rollouts = pq.read_table(run_dir / "rollouts.parquet").to_pylist()
    assert set(ROLLOUT_COLUMNS) <= set(rollouts[0])
    G, P = cfg.rollout.group_size, cfg.train.rollout_batch_size // cfg.rollout.group_size
    assert len(rollouts) == 4 * P * G
    for step in range(1, 5):  # every group of every step exactly once, G samples each
        mine = [r for r in rollouts if r["step"] == step]
        assert sorted({r["group_index"] for r in mine}) == list(range(P))
        assert sorted((r["prompt_id"], r["sample_index"]) for r in mine) == sorted({(r["prompt_id"], r["sample_index"]) for r in mine})
        assert all(r["policy_version"] == step - 1 for r in mine)  # on-policy: sampled by the previous step's weights
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000004"
    assert (run_dir / "policy" / "model.safetensors").is_file()
    assert "step 4/4" in output and "ETA" in output


def test_step_metrics_reach_the_ray_metrics_endpoint(straight):
    _, _, seen = straight
    assert seen, "ray_wavalign_reward_mean{run=\"straight\"} never appeared on the metrics endpoint"


def test_stop_after_step_two_then_resume_gives_the_uninterrupted_metrics(straight, tmp_path, address, toy_assets):
    assert "--resume" in Job(tmp_path, "resumed", address, toy_assets, "--stop-after-step", "2").finish()
    run_dir = run_dir_of(tmp_path, "resumed")
    assert len(metrics_rows(run_dir)) == 2
    assert "resumed from step-000002" in Job(tmp_path, "resumed", address, toy_assets, resume=run_dir).finish()
    expected, got = metrics_rows(straight[0]), metrics_rows(run_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for want, have in zip(expected, got):
        for key in DETERMINED:
            assert have[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (want["step"], key)
    texts = [r["text"] for r in pq.read_table(run_dir / "rollouts.parquet").to_pylist()]
    assert texts == [r["text"] for r in pq.read_table(straight[0] / "rollouts.parquet").to_pylist()]


def rollout_worker_pids(ray) -> list[int]:
    """Process ids of the live rollout workers on the cluster (named rollout-<pool>-<n> by the pool)."""
    pids = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith("rollout-"):
            try:
                handle = ray.get_actor(entry["name"], namespace=entry["namespace"])
                pids.append(ray.get(handle.ready.remote(), timeout=30)["pid"])
            except Exception:  # noqa: BLE001 - gone in between
                pass
    return pids


def test_a_killed_rollout_worker_is_replaced_and_no_group_is_lost(tmp_path, address, toy_assets, cfg, ray_cluster):
    job = Job(tmp_path, "killed", address, toy_assets, "--set", "train.rollout_batch_size=64", "--set", "run.steps=3")
    wait_for_step(lambda: tmp_path.glob("killed-*"), 1, job)
    pids = rollout_worker_pids(ray_cluster)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    output = job.finish()
    assert "died" in output or "removed" in output
    rollouts = pq.read_table(run_dir_of(tmp_path, "killed") / "rollouts.parquet").to_pylist()
    G = cfg.rollout.group_size
    for step in (1, 2, 3):
        keys = [(r["prompt_id"], r["sample_index"]) for r in rollouts if r["step"] == step]
        assert len(keys) == 64 and len(set(keys)) == 64 and len({k[0] for k in keys}) == 64 // G


def test_live_scaling_from_one_to_two_rollout_workers(tmp_path, address, toy_assets):
    job = Job(tmp_path, "scaled", address, toy_assets, "--set", "rollout.cpus_per_worker=0.5", "--set", "run.steps=5")
    wait_for_step(lambda: tmp_path.glob("scaled-*"), 1, job)
    out = subprocess.run([sys.executable, "launch.py", "scale", "--workers", "2", "--run", "scaled", "--address", address],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    output = job.finish()
    rows = metrics_rows(run_dir_of(tmp_path, "scaled"))
    assert rows[0]["rollout_workers"] == 1 and rows[-1]["rollout_workers"] == 2, output[-3000:]
    assert "operator request: rollout workers 1 -> 2" in output


def test_report_renders_the_curves_to_png(straight, tmp_path):
    out = subprocess.run([sys.executable, "-m", "wavalign.report", str(straight[0]), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = {p.stem for p in tmp_path.glob("*.png")}
    assert names == {"rewards", "lambda", "losses", "entropy", "grad_norms", "samples", "evaluation"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in tmp_path.glob("*.png"))


def test_bounded_staleness_samples_the_next_step_while_the_learner_trains(tmp_path, address, toy_assets):
    job = Job(tmp_path, "stale", address, toy_assets, "--set", "train.max_staleness=1", "--set", "run.steps=3",
              "--set", "train.eval_every=0")
    job.finish()
    run_dir = run_dir_of(tmp_path, "stale")
    rows = metrics_rows(run_dir)
    assert [r["staleness"] for r in rows] == [0, 1, 1]  # step t+1 was sampled by the weights before step t
    rollouts = pq.read_table(run_dir / "rollouts.parquet").to_pylist()
    assert {r["policy_version"] for r in rollouts if r["step"] == 3} == {1}
    assert all(r["clip_frac"] >= 0 for r in rows[1:])


def test_sigterm_checkpoints_and_the_run_resumes_to_the_end(tmp_path, address, toy_assets):
    job = Job(tmp_path, "termed", address, toy_assets, "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0")
    wait_for_step(lambda: tmp_path.glob("termed-*"), 1, job)
    job.process.send_signal(signal.SIGTERM)
    assert "(SIGTERM)" in job.finish()
    run_dir = run_dir_of(tmp_path, "termed")
    stopped = len(metrics_rows(run_dir))
    assert stopped < 4 and (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped:06d}"
    Job(tmp_path, "termed", address, toy_assets, resume=run_dir).finish()
    assert [r["step"] for r in metrics_rows(run_dir)] == [1, 2, 3, 4]
