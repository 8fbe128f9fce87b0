"""One run through every fault the README promises to survive, in sequence, each injected at a
known point (wavalign.failpoints) while the run goes, then SIGTERM:

  1. the operator scales the rollout pool from 1 to 2 workers (`launch.py scale`);
  2. a rollout worker is killed (kill -9) in the middle of its weight update (it is removed; the next
     step starts a replacement);
  3. at once: a rollout worker dies as it starts sampling (kill -9; its groups are re-sent), the
     replacement that starts next dies while its engine starts (another takes its place), a reward
     worker dies as it starts scoring, and its replacement dies when asked for its counters (the run
     goes on; the judge counters keep what the dead workers had reported);
  4. while the learner takes a step (the driver held there), a rollout worker and the reward worker,
     both idle, are killed: the sync that follows removes the rollout worker, the next step replaces
     both and re-sends the reward worker's chunk;
  5. the driver gets SIGTERM after a step: it checkpoints that step and stops (resuming from a
     checkpoint: test_pipeline.py).

The run scores with the toy reward and a judge (a real HTTP server on 127.0.0.1 that fails its
first two requests), and trains with online DPO (algorithm.objective dpo: each step's groups give
their best vs worst response), whose pairs are checked here too: the faults touch the pools, not
the objective."""

from __future__ import annotations

import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.judge_server import JudgeServer
from tests.integration.pipeline_jobs import (
    Failpoints,
    Job,
    launch_args,
    live_workers,
    metrics_rows,
    operator_command,
    rollout_rows,
    rows_so_far,
    run_dir_of,
    wait_until,
)

FAULT_SETS = {
    "algorithm.objective": "dpo",
    "run.steps": "40",
    "train.eval_every": "0",
    "train.checkpoint_every": "0",
    "learner.grad_norm_every": "0",
    "rollout.cpus_per_worker": "0.5",
    "reward.functions": "[{name: toy_answer, weight: 0.5}, {name: judge, weight: 0.5}]",
    "reward.judge.backoff_s": "0.01",
}
FLAKY_FAILURES = 2
# How each fault shows in the run's log (the first line that has all the words).
FAULT_LINES = {
    "rollout.update_weights": ("warning: weight update to version", "failed; removed rollout-"),
    "rollout.generate": ("rollout pool: rollout-", "died", "re-sending chunk"),
    "rollout.start": ("rollout pool: rollout-", "failed to start", "in its place"),
    "reward.score": ("reward pool: reward-", "died", "re-sending chunk"),
    "reward.counters": ("reward pool: reward-", "died", "replaced by the next batch"),
}


def steps_of(output: str, words: tuple[str, ...]) -> list[int]:
    """The steps during which a log line with all `words` was printed: each the next progress line's."""
    lines = output.splitlines()
    steps = []
    for start in [i for i, line in enumerate(lines) if all(w in line for w in words)]:
        progress = next(line for line in lines[start:] if re.match(r"step \d+/\d+ \|", line))
        steps.append(int(progress.split()[1].split("/")[0]))
    return steps


def step_of(output: str, words: tuple[str, ...]) -> int:
    return steps_of(output, words)[0]


def came_up_after_failed_start(output: str) -> bool:
    """A rollout worker came up after the one that failed to start (its replacement)."""
    lines = output.splitlines()  # (narrated lines searched: a raylet message may precede one on its line)
    failed = [i for i, line in enumerate(lines) if "rollout pool: rollout-" in line and "failed to start" in line]
    return bool(failed) and any(
        re.search(r"rollout pool: rollout-\w+-\d+ up \(pid \d+\)$", line) for line in lines[failed[0] :]
    )


@dataclass
class FaultRun:
    run_dir: Path
    output: str  # the run's log
    scale_output: str
    status_output: str  # `launch.py status` once the pool had grown
    fault_steps: dict[str, int]  # failpoint -> the step during which it fired
    idle_kill_step: int  # the step whose learner phase the idle workers were killed in
    stopped: int  # the step after which SIGTERM stopped the run


@pytest.fixture(scope="module")
def faults(tmp_path_factory, address, toy_assets) -> FaultRun:
    root = tmp_path_factory.mktemp("faults")
    server = JudgeServer(flaky_failures=FLAKY_FAILURES)
    failpoints = Failpoints(root)
    args = launch_args(root, "faults", toy_assets, {**FAULT_SETS, "reward.judge.url": server.url("flaky")})
    job = Job(root / "run.log", args, address, env=failpoints.env)

    def rows() -> list[dict]:
        return rows_so_far(root, "faults")

    def kill_paused(point: str, victims, then_steps: int = 2) -> int:
        """Hold the run at `point`, kill -9 victims(pid of the held process), let it go on; returns
        the number of steps done before (the fault happens in the next one)."""
        failpoints.arm(point, "pause")
        held = wait_until(lambda: failpoints.paused_pid(point), job, f"the run held at {point}")
        done = len(rows())
        for pid in victims(held):
            os.kill(pid, signal.SIGKILL)
        failpoints.resume(point)
        wait_until(lambda: len(rows()) >= done + then_steps, job, f"{then_steps} steps after {point}")
        return done

    def inject(*points: str, action: str, then_steps: int = 1) -> None:
        """Arm the points, wait until each has fired, then until `then_steps` more steps are done."""
        for point in points:
            failpoints.arm(point, action)
        wait_until(lambda: all(failpoints.fired(p) for p in points), job, f"failpoints {points}")
        done = len(rows())  # the step it fired in is not among them
        wait_until(lambda: len(rows()) >= done + then_steps, job, f"{then_steps} steps after {points}")

    try:
        wait_until(lambda: rows(), job, "step 1")
        scale = operator_command(address, 0, "scale", "--workers", "2", "--run", "faults")
        missing = operator_command(address, 1, "status", "--run", "nope")
        wait_until(lambda: any(r["rollout_workers"] == 2 for r in rows()), job, "a step with 2 rollout workers")
        status = operator_command(address, 0, "status", "--run", "faults")
        kill_paused("rollout.update_weights", lambda pid: [pid])
        inject("rollout.generate", "rollout.start", "reward.score", "reward.counters", action="exit", then_steps=0)
        wait_until(lambda: came_up_after_failed_start(job.output()), job, "the replacement's replacement up")
        idle_kill_step = 1 + kill_paused(
            "driver.learning",
            lambda _: [
                next(iter(live_workers(job.output(), "rollout").values())),
                *live_workers(job.output(), "reward").values(),
            ],
        )
        failpoints.arm("driver.step_done", "sigterm")
        output = job.finish()
        run_dir = run_dir_of(root, "faults")
        stopped = len(metrics_rows(run_dir))
    finally:
        job.kill()
        server.close()
    fault_steps = {point: step_of(output, words) for point, words in FAULT_LINES.items()}
    return FaultRun(run_dir, output, scale.stdout + missing.stdout, status.stdout, fault_steps, idle_kill_step, stopped)


def test_operator_scales_the_rollout_pool_between_steps(faults):
    rows = metrics_rows(faults.run_dir)
    assert "requested 2 rollout workers for run 'faults'" in faults.scale_output
    assert "error: no running job named 'nope' on this cluster" in faults.scale_output
    # `launch.py status`: the last step's progress line, the workers of both pools, where the outputs go
    assert re.search(r"^run 'faults': step \d+/\d+ \| reward .* \| ETA ", faults.status_output, re.M), (
        faults.status_output
    )
    assert re.search(r"^  rollout workers \(2\): rollout-\w+-\d+ (idle|busy), ", faults.status_output, re.M)
    assert re.search(r"^  reward workers \(\d\): reward-", faults.status_output, re.M)
    assert f"  outputs: {faults.run_dir}" in faults.status_output
    assert "operator request: rollout workers 1 -> 2" in faults.output
    assert rows[0]["rollout_workers"] == 1
    before_faults = [r["rollout_workers"] for r in rows if r["step"] < faults.fault_steps["rollout.update_weights"]]
    assert before_faults == sorted(before_faults) and before_faults[-1] == 2  # 1 ... 1, 2 ... 2


def test_a_failed_weight_update_removes_the_worker_and_the_next_step_replaces_it(faults):
    step = faults.fault_steps["rollout.update_weights"]
    (line,) = [
        line for line in faults.output.splitlines() if f"warning: weight update to version {step} failed" in line
    ]
    assert re.search(r"removed rollout-\w+-\d+: .*(died|exited)", line), line  # killed mid-update, named
    workers = {r["step"]: r["rollout_workers"] for r in metrics_rows(faults.run_dir)}
    assert workers[step] == 1 and workers[step + 1] == 2


def test_workers_killed_while_the_learner_steps_are_replaced(faults):
    """Killed idle (the driver held at driver.learning): the rollout worker is found at the sync that
    follows, the reward worker when asked for the step's counters; the next step has both pools whole."""
    step = faults.idle_kill_step
    assert steps_of(faults.output, ("warning: weight update to version", "failed; removed rollout-"))[-1] == step
    assert steps_of(faults.output, ("reward pool: reward-", "died", "replaced by the next batch"))[-1] == step
    workers = {r["step"]: (r["rollout_workers"], r["reward_workers"]) for r in metrics_rows(faults.run_dir)}
    assert workers[step][0] == 1 and workers[step + 1] == (2, 1)


def test_a_killed_rollout_worker_is_replaced_even_when_its_replacement_dies_starting(faults):
    assert "rollout pool: rollout-" in faults.output and "died" in faults.output and "re-sending chunk" in faults.output
    (line,) = re.findall(r"rollout pool: rollout-.*failed to start.*", faults.output)
    assert "(1 of at most 2 in a row)" in line, line
    assert came_up_after_failed_start(faults.output)  # the replacement's replacement came up
    assert metrics_rows(faults.run_dir)[-1]["rollout_workers"] == 2


def test_a_killed_reward_worker_is_replaced_and_the_judge_counters_go_on(faults, cfg):
    # (a narrated line may follow a raylet message that Ray wrote to stderr without its newline)
    lines = re.findall(r"reward pool: reward-\S+ died.*", faults.output)
    assert len(lines) == 3 and {"re-sending chunk 0" in line for line in lines} == {True, False}, lines
    assert any("replaced by the next batch" in line for line in lines)
    lost_at = (faults.fault_steps["reward.counters"], faults.idle_kill_step)
    rows = metrics_rows(faults.run_dir)
    per_step = cfg.train.rollout_batch_size  # every response is one judge request
    for row in rows:
        # a worker that died before it was asked for the step's counters (when asked, or killed while
        # the learner stepped) took that step's requests with it; everything reported before is kept
        lost = per_step * sum(row["step"] >= step for step in lost_at)
        assert row["judge_judge_requests"] == per_step * row["step"] - lost, row["step"]
        assert row["judge_judge_http_errors"] == FLAKY_FAILURES and row["judge_judge_retries"] == FLAKY_FAILURES
        assert row["reward_workers"] == 1
    assert rows[-1]["step"] > max(*lost_at, faults.fault_steps["reward.score"])  # the run went on


def test_sigterm_checkpoints_the_step_and_stops(faults):
    stopped = faults.stopped
    assert (
        f"stopped after step {stopped} (SIGTERM); continue with: python launch.py --resume {faults.run_dir}"
        in faults.output
    )
    assert [r["step"] for r in metrics_rows(faults.run_dir)] == list(range(1, stopped + 1))
    checkpoint = faults.run_dir / "checkpoints" / f"step-{stopped:06d}"
    assert (faults.run_dir / "checkpoints" / "latest").read_text().strip() == checkpoint.name
    assert (checkpoint / "driver.json").is_file() and (checkpoint / "learner").is_dir()
    assert not (faults.run_dir / "policy").exists()  # exported only at the last step
    assert stopped > max(*faults.fault_steps.values(), faults.idle_kill_step)


def test_every_group_of_every_step_once_from_current_weights_with_both_scores(faults, cfg):
    rollouts = rollout_rows(faults.run_dir)
    G, P = cfg.rollout.group_size, cfg.train.rollout_batch_size // cfg.rollout.group_size
    for step in range(1, faults.stopped + 1):
        mine = [r for r in rollouts if r["step"] == step]
        keys = [(r["prompt_id"], r["sample_index"]) for r in mine]
        assert len(keys) == P * G and len(set(keys)) == P * G and len({k[0] for k in keys}) == P, step
        assert {r["policy_version"] for r in mine} == {step - 1}, step  # never a stale engine
    for r in rollouts:  # the flaky judge recovers within its attempts: every score is its 3
        assert r["reward_judge"] == 3.0 and r["reward"] == pytest.approx(0.5 * r["reward_toy_answer"] + 0.5 * 3.0)


def test_online_dpo_pairs_each_steps_best_and_worst_responses(faults, cfg):
    """algorithm.objective dpo from launch.py: each step's groups give their best vs worst response
    (the pair builder's rule, gap >= 1), through every fault; the learner takes a DPO step against
    the frozen initial policy, so the first step's loss is ln 2 exactly; the pairs' sides are
    measured per modality."""
    rows, rollouts = metrics_rows(faults.run_dir), rollout_rows(faults.run_dir)
    assert "| dpo " in faults.output
    groups_per_step = cfg.train.rollout_batch_size // cfg.rollout.group_size
    for row in rows:
        groups = [
            [r["reward"] for r in rollouts if r["step"] == row["step"] and r["group_index"] == g]
            for g in range(groups_per_step)
        ]
        assert row["dpo_pairs"] == sum(max(g) - min(g) >= 1 for g in groups), row["step"]  # one per group with a gap
        sides = [row[f"dpo_{side}_{kind}_tokens"] for side in ("chosen", "rejected") for kind in ("text", "speech")]
        assert all(math.isfinite(v) and v > 0 for v in sides) == (row["dpo_pairs"] > 0)
    first = next(r for r in rows if r["dpo_pairs"] > 0)
    assert (
        first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
        if first["step"] == 1
        else math.isfinite(first["dpo_loss"])
    )
