"""wavalign-ray driver.

    python launch.py --config pipeline.yaml [--set a.b=c ...] [--dry-run] [--address ADDR]
    python launch.py --resume RUN_DIR [--set run.steps=N]    continue a run from its latest checkpoint
    python launch.py scale --workers N [--run NAME]          resize a running job's rollout pool
    python launch.py status [--run NAME]                     a running job's last step, workers, outputs

Each step: the next prompts -> G responses each from the rollout pool, every chunk of groups scored
by the reward pool as soon as it is in (streamed statistics) -> advantages and λ -> one learner step
(DeepSpeed) -> the new weights into every rollout worker -> metrics, rollouts, checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pipeline YAML (see pipeline.yaml); with --resume: the run's own")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. rollout.group_size=8"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved config, start nothing")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)"
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    parser.add_argument("--stop-after-step", type=int, default=None, help="checkpoint and stop after this step")
    args = parser.parse_args(argv)
    if not args.config and not args.resume:
        parser.error("--config is required (or --resume RUN_DIR)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["scale"], ["status"]):  # operator commands against a running job
        from actors.control import scale_main, status_main

        return (scale_main if argv[0] == "scale" else status_main)(argv[1:])
    args = parse_args(argv)
    from driver.preflight import (
        PreflightError,
        check_cluster,
        check_resume,
        new_run_store,
        preflight,
        resumed_run_store,
    )
    from wavalign.config import InvalidConfig
    from wavalign.config_file import config_yaml, read_config, save_config

    # 1. Resolve the config (file, or a resumed run's own snapshot, + overrides) as one tree, then
    #    run every check short of starting Ray: the pipeline runs it, its reward functions build,
    #    the policy loads, the data is there and valid. Nothing is written before they pass.
    note = functools.partial(
        print, file=sys.stderr if args.dry_run else sys.stdout, flush=True
    )  # a dry run prints the config
    try:
        resumed, saved_config = resumed_run_store(args.resume) if args.resume else (None, None)
        cfg = read_config(args.config or saved_config, args.set)
        inputs = preflight(cfg, build_toy=not args.dry_run, log=note)
        check_cluster(args.address)  # a cluster named but not there: before anything is written
        if resumed:
            check_resume(resumed)
        store = resumed or new_run_store(cfg, time.strftime("%Y%m%d-%H%M%S"))
    except (InvalidConfig, PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config_yaml(cfg), end="")
        return 0

    # 2. The run's folder (new, or the resumed run's) with the resolved config in it: a path, or a
    #    URI (s3://...) written through a local staging folder (wavalign/storage.py).
    store.local.mkdir(parents=True, exist_ok=bool(resumed) or store.remote)
    save_config(cfg, store.local / "config.yaml")
    store.publish("config.yaml")
    print(f"run dir: {store.location}", flush=True)

    # 3. Policy, data, Ray and the workers: rollout pool, reward pool, learners, operator control.
    from actors.learner_group import LearnerLost
    from actors.worker_pool import WorkerError
    from driver.pipeline import Pipeline
    from wavalign.ray_join import ClusterUnreachable

    try:
        pipe = Pipeline(cfg, store, args.address, inputs)
        # 4. Resume: learner state, λ, data cursor, step and policy version; the pool gets the weights.
        if args.resume:
            pipe.resume()
        pipe.evaluate_start()  # the eval split on the starting policy (a new run), or read back
    except (WorkerError, ClusterUnreachable) as err:  # no cluster; workers that cannot start (nor their replacements)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, functools.partial(request_stop, stop))

    # 5. The loop. A worker failure the pools cannot heal (replacements that keep dying, a chunk
    #    lost max_redispatch times, a deadline passed) ends it after a checkpoint of the last step.
    while pipe.step < cfg.run.steps:
        step = pipe.step + 1
        final = step in (cfg.run.steps, args.stop_after_step)  # the run's last step, unless SIGTERM comes first
        started = time.monotonic()
        try:
            pipe.apply_operator_requests()  # `launch.py scale --workers N`, between steps
            # 5a. Prompts -> rollouts, each chunk of groups scored as soon as it is in (unless 5c
            #     sampled them during the previous step).
            sampled = pipe.take_sampled_ahead() or pipe.sample(step)
            wait_started = time.monotonic()
            results = sampled.scoring.finish(cfg.reward.timeout_s)
            reward_wait_s = time.monotonic() - wait_started
            # 5b. Advantages per group; λ from the streamed group statistics.
            scored = pipe.assemble(sampled, results)
            # 5c. One learner step on the RL rows (text tokens) and the SFT rows, mixed by λ. Bounded
            #     staleness (train.max_staleness: 1): while it runs, the next step's rollouts are
            #     sampled from the weights it started from (one version old when they are trained on).
            learn_started = time.monotonic()
            learning = pipe.start_learning(scored)
            if cfg.train.max_staleness and not final:  # (never a step the run will not take)
                pipe.sample_ahead(step + 1)
            learned = pipe.finish_learning(learning)
            learn_s = time.monotonic() - learn_started
            # 5d. The new weights into every rollout worker: the next step samples from them.
            #     The learner sends them itself; the driver names the workers and the version.
            sync = pipe.sync_weights()
            # 5e. Metrics, rollouts, evaluation, progress, checkpoint.
            timings = {
                "generation_seconds": sampled.generation_seconds,
                "reward_wait_seconds": reward_wait_s,
                "learn_seconds": learn_s,
                **sync,
                "step_seconds": time.monotonic() - started,
            }
            pipe.record_step(scored, learned, timings)
            last = final or stop["requested"]
            if last or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                pipe.checkpoint()
        except LearnerLost as err:
            # 5f. A learner rank died or hung (node lost, OOM): new learners from the last
            #     checkpoint, the driver and the rollout workers rewound to it; the lost steps are
            #     taken again, exactly (learner.max_restarts per job, each counted).
            if pipe.rebuild_learner(err):
                continue
            return 1
        except WorkerError as err:
            pipe.stop_after_failure(err)
            return 1
        if last and step < cfg.run.steps:
            why = "SIGTERM" if stop["requested"] else f"--stop-after-step {step}"
            how = f"continue with: python launch.py --resume {store.location}"
            print(f"stopped after step {step} ({why}); {how}", flush=True)
            break

    # 6. Close: the held-out figures at the start and now, the merged rollouts, the final policy
    #    as an HF directory, the workers.
    finished = pipe.step == cfg.run.steps
    try:
        if finished and (summary := pipe.heldout_summary()):
            print(summary, flush=True)
    except WorkerError as err:  # the run is complete: only its summary is lost
        print(f"warning: no held-out summary: {err}", flush=True)
    pipe.finish(export=finished)
    print(f"done: {pipe.step} steps; outputs in {store.location}", flush=True)
    return 0


def request_stop(stop: dict, *_) -> None:
    """SIGTERM (`ray job stop`, an operator's kill): the loop ends after the step under way, with a
    checkpoint. Said at once, so the operator sees it was heard: os.write, since a print here could
    re-enter the stream the loop is printing to."""
    stop["requested"] = True
    os.write(sys.stdout.fileno(), b"stop requested (SIGTERM): the run stops after this step, with a checkpoint\n")


if __name__ == "__main__":
    sys.exit(main())
