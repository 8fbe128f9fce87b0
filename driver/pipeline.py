"""Pipeline: the state of a run and the pieces of one step that launch.py narrates.

It owns the workers (rollout pool, reward pool, data-parallel learners, the operator's control
worker), the prompt stream, the λ controller(s), the step counter and the policy version, and the
run's outputs. Every method is one narrated step of the loop; none of them loops over steps. The
phases hand each other the records of driver/step_records.py.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from actors.control import apply_requests, start_control
from actors.learner_group import LearnerGroup, LearnerLost
from actors.pool import RolloutPool
from actors.reward_pool import RewardPool
from actors.weight_sync import SYNC_PHASES, WeightSyncError
from actors.worker_pool import WorkerError
from driver.checkpoint import latest_checkpoint, load_checkpoint, random_states, save_checkpoint, set_random_states
from driver.dashboard import DashboardMetrics
from driver.evaluation import evaluate, heldout, scored_by_toy_task
from driver.heldout import HELDOUT_START, HeldOut, summary_line
from driver.inputs import connect_ray, model_for_workers
from driver.outputs import RunOutputs
from driver.preflight import Inputs
from driver.prompts import PromptStream
from driver.reward_stream import RewardStream
from driver.step_data import (
    Group,
    advantages_of,
    assemble_groups,
    dpo_batches,
    learner_batches,
    offline_dpo_pairs,
    online_dpo_pairs,
    rollout_rows,
    step_lambdas,
)
from driver.step_metrics import progress_line, step_metrics
from driver.step_records import LearningStep, SampledStep, ScoredStep
from learner.masks import modality_counts
from learner.mixing import LambdaController, LambdaSettings
from learner.step_stats import StepStats
from wavalign.atomic import write_text_atomic
from wavalign.config import PipelineConfig
from wavalign.failpoints import failpoint
from wavalign.interleave import response_channels, text_string
from wavalign.messages import RewardResult
from wavalign.model_files import tokenizer_class_of
from wavalign.storage import RunStore

REPEAT = "~"  # eval prompt id + REPEAT + k: the k-th ask of that prompt (train.eval_repeats)
# A DPO run's own columns, in every one of its rows (NaN where a step had no pairs)
DPO_NAN = {key: math.nan for key in ("dpo_loss", "dpo_accuracy", "dpo_margin", "sft_loss")}


def lambda_settings(cfg: PipelineConfig) -> LambdaSettings:
    a = cfg.algorithm
    return LambdaSettings(
        lambda_max=a.lambda_max,
        ema_alpha=a.ema_alpha,
        gate_slope=a.gate_slope,
        scale_min=cfg.reward.scale_min,
        scale_max=cfg.reward.scale_max,
        adaptive=a.adaptive_mixing,
        fixed_weight=a.fixed_rl_weight,
    )


def step_seed(cfg: PipelineConfig, step: int) -> int:
    """The sampler seed of a step (chunk i adds i): a function of the run seed and the step only."""
    return (cfg.run.seed * 1_000_003 + step * 7919) % (2**31)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, store: RunStore, address: str | None, inputs: Inputs) -> None:
        """`store`: the run's storage (its config.yaml written); `inputs`: what preflight(cfg) checked
        and loaded (policy, tokenizer, layout, data)."""
        self.cfg, self.store, self.run_dir = cfg, store, store.local
        self.group_size = cfg.rollout.group_size
        self.tokenizer, self.layout = inputs.tokenizer, inputs.layout
        self.model_path = model_for_workers(cfg, inputs.model_path, store)  # what every node can read
        self.eval_rows = inputs.eval_rows
        self.heldout_start: HeldOut | None = None  # the eval split before step 1, and at the last evaluation
        self.heldout_last: HeldOut | None = None
        self.prompts = PromptStream(inputs.train_rows, cfg.run.seed, cfg.train.rollout_batch_size // self.group_size)
        print(
            f"data: {len(inputs.train_rows)} train prompts, {len(self.eval_rows)} eval prompts; "
            f"policy: {self.model_path}",
            flush=True,
        )

        connect_ray(
            address,
            log_to_driver=cfg.run.worker_logs_to_console,
            run_storage=store.location,
            shipped=cfg.run.runtime_env.ray_runtime_env(os.getcwd()),
        )
        # every worker starts at once (the learners are waited for first, then the pools)
        # a rollout worker that comes up after the first sync gets the last version from the learner
        self.rollouts = RolloutPool(
            cfg, self.model_path, wait=False, bring_up_weights=lambda w: self.learners.bring_up(w)
        )
        self.rewards = RewardPool(cfg, self.model_path, wait=False, tokenizer_class=tokenizer_class_of(self.tokenizer))
        self.learners = self._start_learners()
        self.rollouts.wait_until_up()
        self.rewards.wait_until_up()
        self.control = start_control(cfg.run.name)
        self.dashboard = DashboardMetrics(cfg.run.name)
        per_rank = cfg.algorithm.lambda_scope == "per_rank"
        self.controllers = [
            LambdaController(lambda_settings(cfg)) for _ in range(cfg.learner.num_workers if per_rank else 1)
        ]
        self.step, self.version = 0, 0
        self.learned_step = 0  # the last step the learner has taken (one ahead of self.step mid-step)
        self._prompts_after_step = self.prompts.state_dict()  # the cursor as of the last complete step
        self._ahead: SampledStep | None = None  # the next step, sampled while the learner took this one
        self.outputs: RunOutputs | None = None
        self._step_seconds: list[float] = []
        self.learner_restarts = 0  # learner groups rebuilt in this run (resumed runs included)
        self._restarts_left = cfg.learner.max_restarts  # in this job
        self._start = {"rng": random_states(), **self._run_state()}  # what a rebuild before any checkpoint rewinds to

    def _start_learners(self) -> LearnerGroup:
        learners = LearnerGroup(self.cfg, self.model_path)
        learners.check_storage(self.store)  # a path that the learners' nodes do not share is an error now
        return learners

    # ------------------------------------------------------------------------------ run state
    def resume(self) -> None:
        checkpoint = latest_checkpoint(self.store)
        if checkpoint is None:
            print("resume: no checkpoint yet; starting from step 0", flush=True)
        else:
            state = self._restore(checkpoint)
            self.learner_restarts = state.get("learner_restarts", 0)
            print(f"resumed from {checkpoint}: step {self.step}, policy version {self.version}", flush=True)
        self.outputs = RunOutputs(self.store, resume_step=self.step)

    def _run_state(self) -> dict:
        """The driver's part of a checkpoint. The prompt cursor is the last complete step's: rollouts
        sampled ahead are not saved, and a resumed run samples that step again (from the saved weights,
        so bounded-staleness runs resume close to, not exactly like, the original)."""
        return {
            "step": self.step,
            "policy_version": self.version,
            "prompts": self._prompts_after_step,
            "lambda": [c.state_dict() for c in self.controllers],
        }

    def _restore(self, checkpoint: str | None) -> dict:
        """The learners' state (a checkpoint's, or the policy they started from when None), the
        driver's (step, policy version, prompt cursor, λ, random states) to match, and the rollout
        workers back on that version. Returns the driver's saved state."""
        if checkpoint is None:
            state = self._start
            set_random_states(state["rng"])
        else:
            state = load_checkpoint(self.store, checkpoint, self.learners)
        self.step, self.version = state["step"], state["policy_version"]
        self.learned_step = self.step
        self.prompts.load_state_dict(state["prompts"])
        self._prompts_after_step = self.prompts.state_dict()
        for controller, saved in zip(self.controllers, state["lambda"], strict=True):
            controller.load_state_dict(saved)
        self.sync_weights(advance=False)
        return state

    def rebuild_learner(self, err: LearnerLost) -> bool:
        """A learner rank died or hung: a new learner group from the last checkpoint in the run's
        storage (or the starting policy before the first), the driver rewound to it (data cursor, λ,
        step, policy version; what was written after it dropped), the rollout workers re-synced; the
        run then repeats the lost steps exactly. At most learner.max_restarts times per job, each
        said and counted (learner_restarts); past that, or when the rebuild fails, the run stops
        (False)."""
        while True:
            if self._restarts_left == 0:
                limit = self.cfg.learner.max_restarts
                self.stop_after_failure(LearnerLost(f"{err} (learner.max_restarts={limit} rebuilds used)"))
                return False
            self._restarts_left -= 1
            self.learner_restarts += 1
            checkpoint = latest_checkpoint(self.store)
            print(
                f"warning: {err}; rebuilding the learners from {checkpoint or 'the starting policy'} "
                f"(rebuild {self.learner_restarts}, {self._restarts_left} more allowed in this job)",
                flush=True,
            )
            self._drop_sampled_ahead()
            self.learners.shutdown()
            try:
                self.learners = self._start_learners()
                self._restore(checkpoint)
            except LearnerLost as again:
                err = again
                continue
            except WorkerError as failed:  # the new group cannot start at all
                self.stop_after_failure(failed)
                return False
            self._outputs().close()
            self.outputs = RunOutputs(self.store, resume_step=self.step)
            print(f"learners rebuilt: continuing after step {self.step}, policy version {self.version}", flush=True)
            return True

    def checkpoint(self) -> None:
        state = {**self._run_state(), "learner_restarts": self.learner_restarts}
        directory = save_checkpoint(self.store, self.step, self.learners, state, self.cfg.train.keep_checkpoints)
        self._outputs().merge_rollouts()
        print(f"checkpoint: {directory}", flush=True)

    def _outputs(self) -> RunOutputs:
        if self.outputs is None:
            self.outputs = RunOutputs(self.store)
        return self.outputs

    def apply_operator_requests(self) -> None:
        apply_requests(self.control, self.rollouts)

    # ------------------------------------------------------------------------------ one step
    def sample(self, step: int) -> SampledStep:
        """The step's prompts and their G responses each; every chunk goes to the reward pool the
        moment it is in."""
        prompts = self.prompts.next_step()
        stats = StepStats(self.controllers[0].settings, self.group_size)
        scoring = RewardStream(self.rewards, {r.row_id: r for r in prompts}, stats)
        started = time.monotonic()
        records = self.rollouts.generate(
            [(r.row_id, r.prompt_token_ids) for r in prompts], seed=step_seed(self.cfg, step), on_chunk=scoring.submit
        )
        return SampledStep(step, prompts, records, scoring, time.monotonic() - started)

    def sample_ahead(self, step: int) -> None:
        """Bounded staleness (train.max_staleness: 1): `step` sampled now, from the weights the
        learner is updating, while it works; `take_sampled_ahead` hands it to the next iteration."""
        self._ahead = self.sample(step)

    def take_sampled_ahead(self) -> SampledStep | None:
        ahead, self._ahead = self._ahead, None
        return ahead

    def assemble(self, sampled: SampledStep, results: Mapping[tuple[str, int], RewardResult]) -> ScoredStep:
        groups = assemble_groups(sampled.prompts, sampled.records, results, self.group_size)
        advantages = advantages_of(groups, unbiased_std=self.cfg.algorithm.advantage_std == "unbiased")
        lambdas, aggregates = step_lambdas(sampled.scoring.stats, self.controllers, groups)
        return ScoredStep(sampled.step, groups, advantages, lambdas, aggregates)

    def start_learning(self, scored: ScoredStep) -> LearningStep:
        """Starts one learner step and returns at once: WavAlign's (RL rows + SFT rows mixed by λ), or
        with algorithm.objective dpo, DPO's on the step's pairs. Rollouts older than the learner's
        weights (bounded staleness) carry their staleness, so the learner applies the clipped
        importance ratio."""
        groups = scored.groups
        staleness = self.version - min(r.policy_version for g in groups for r in g.records)
        if self.cfg.algorithm.objective == "dpo":
            batches, extra = self._dpo_batches(groups)
        else:
            lams = [s.lam for s in scored.lambdas]
            batches = learner_batches(
                groups,
                scored.advantages,
                lams,
                self.cfg.learner.num_workers,
                self.layout,
                self.cfg.algorithm.sft_token_type,
                staleness,
            )
            extra = {}
        if self.cfg.rollout.colocate:  # the learner gets the GPUs that vLLM shares with it
            self.rollouts.sleep()
        pending = self.learners.train_start(batches) if batches else None
        failpoint("driver.learning")
        return LearningStep(scored.step, pending, staleness, extra)

    def finish_learning(self, learning: LearningStep) -> dict[str, float]:
        """Waits for the learner step; its statistics (the ranks' mean) and the rollouts' staleness."""
        if learning.pending is None:
            learned = {"skipped": 1.0, "dpo_pairs": 0.0}
        else:
            learned = self.learners.train_result(learning.pending)
        self.learned_step = learning.step
        if self.cfg.algorithm.objective == "dpo":
            learned = {**DPO_NAN, **learned, **learning.extra}
        return {**learned, "staleness": float(learning.staleness)}

    def _dpo_batches(self, groups: Sequence[Group]):
        """The step's DPO pairs split over the ranks, and the pairs' sides measured (mean text and speech
        tokens of the chosen and the rejected responses). No pair (every group's rewards within
        algorithm.dpo_min_score_gap): no learner step."""
        a = self.cfg.algorithm
        if a.dpo_pairs == "online":
            pairs = online_dpo_pairs(groups, a.dpo_min_score_gap, a.dpo_chosen)
        else:
            pairs = offline_dpo_pairs([g.row for g in groups])
        batches = dpo_batches(pairs, self.cfg.learner.num_workers)
        sides = {}
        for side in ("chosen", "rejected"):
            counts = [modality_counts(ids, self.layout) for batch in batches for ids in getattr(batch, side)]
            for kind in ("text", "speech"):
                sides[f"dpo_{side}_{kind}_tokens"] = sum(c[kind] for c in counts) / len(counts) if counts else math.nan
        return batches, sides

    def sync_weights(self, advance: bool = True) -> dict[str, float]:
        """The learner's weights into every rollout worker, as the next policy version (advance=False:
        as the current one, after a restore), sent by the learner itself. Seconds from the end of the
        learner step to the last worker ready, and the learner's split of them (NaN where the transfer
        backend does not report one)."""
        if advance:
            self.version += 1
        started = time.monotonic()
        phases: dict[str, float] = {}
        try:
            if self.cfg.rollout.colocate:
                self.rollouts.wake_up(["weights"])
            phases = self.rollouts.sync_weights(self.version, self.learners.send_weights, rewind=not advance).phases
            if self.cfg.rollout.colocate:
                self.rollouts.wake_up(["kv_cache"])
        except WeightSyncError as err:
            # The failed workers are gone (never stale); the next step starts replacements, which
            # receive this version before they sample.
            print(f"warning: {err}", flush=True)
        timings = {"sync_seconds": time.monotonic() - started}
        timings.update({f"sync_{phase}_seconds": phases.get(phase, math.nan) for phase in SYNC_PHASES})
        return timings

    def record_step(self, scored: ScoredStep, learned: dict[str, float], timings: dict[str, float]) -> None:
        step, groups = scored.step, scored.groups
        self.step = step
        self._prompts_after_step = self.prompts.state_dict(give_back_last_step=self._ahead is not None)
        row = step_metrics(
            step=step,
            version=self.version,
            lambdas=scored.lambdas,
            reward_aggregates=scored.reward_aggregates,
            learned=learned,
            timings=timings,
            response_tokens=sum(len(r.response_token_ids) for g in groups for r in g.records),
            workers={"rollout": len(self.rollouts.members), "reward": len(self.rewards.members)},
        )
        row["learner_restarts"] = float(self.learner_restarts)
        row.update(self._judge_counters())
        row.update(self.rollout_quality(groups))
        if self.eval_rows and step % self.cfg.train.eval_every == 0:
            row.update(self.evaluate(step))
        self._outputs().add_step(row, rollout_rows(step, groups, scored.advantages, self._decode_text))
        self.dashboard.report_step(row)
        self.dashboard.report_workers({"rollout": self.rollouts.states(), "reward": self.rewards.states()})
        self._step_seconds.append(timings["step_seconds"])
        recent = self._step_seconds[-5:]
        progress = progress_line(row, self.cfg.run.steps, sum(recent) / len(recent))
        print(progress, flush=True)
        # what `launch.py status` shows (the control worker keeps the driver's last report)
        pools = {"rollout": self.rollouts.states(), "reward": self.rewards.states()}
        self.control.report.remote({"progress": progress, "workers": pools, "storage": self.store.location})
        failpoint("driver.step_done")

    def _judge_counters(self) -> dict[str, float]:
        return {f"judge_{key.replace('/', '_')}": float(v) for key, v in self.rewards.counters().items()}

    def _decode_text(self, record) -> str:
        text_ids, _, _ = response_channels(record.response_token_ids, self.layout)
        return text_string(text_ids, self.tokenizer)

    def rollout_quality(self, groups: Sequence[Group]) -> dict[str, float]:
        """The step's own samples measured like the eval set (toy data: clean semantic accuracy, not
        the possibly noisy reward; acoustic WER; speech-code distance): both axes every step, free."""
        rows = [g.row for g in groups]
        if not scored_by_toy_task(self.cfg, rows):
            return {}
        records = [r for g in groups for r in g.records]
        return {f"rollout_{k}": v for k, v in evaluate(self.cfg, self.tokenizer, self.layout, rows, records).items()}

    def evaluate(self, step: int) -> dict[str, float]:
        """G samples per eval prompt from the current policy (seeded apart from training's); toy data:
        with the accuracy's standard error, and kept for the run's held-out summary."""
        repeats = self.cfg.train.eval_repeats  # each prompt asked again under another id, scored under its own
        asked = [(f"{r.row_id}{REPEAT}{k}", r.prompt_token_ids) for k in range(repeats) for r in self.eval_rows]
        sampled = self.rollouts.generate(asked, seed=step_seed(self.cfg, -step))
        records = [replace(r, prompt_id=r.prompt_id.rsplit(REPEAT, 1)[0]) for r in sampled]
        found = evaluate(self.cfg, self.tokenizer, self.layout, self.eval_rows, records)
        if scored_by_toy_task(self.cfg, self.eval_rows):
            self.heldout_last = heldout(self.cfg, self.tokenizer, self.layout, self.eval_rows, records, step, found)
            found["semantic_accuracy_se"] = self.heldout_last.semantic_accuracy_se
        return {f"eval_{k}": v for k, v in found.items()}

    def _measures_heldout(self) -> bool:
        return bool(self.eval_rows and self.cfg.train.eval_every and scored_by_toy_task(self.cfg, self.eval_rows))

    def evaluate_start(self) -> None:
        """A new run with toy eval data: the starting policy on the eval split, before step 1 (the
        figure the end compares with), saved as eval_start.json; a resumed run reads it back."""
        if not self._measures_heldout():
            return
        if self.step == 0:
            self.evaluate(0)
            self.heldout_start = self.heldout_last
            write_text_atomic(self.store.local / HELDOUT_START, self.heldout_start.to_json())
            self.store.publish(HELDOUT_START)
            start = self.heldout_start
            print(
                f"held-out at the start: semantic accuracy {start.semantic_accuracy:.3f} "
                f"± {start.semantic_accuracy_se:.3f}, acoustic WER {start.acoustic_wer:.3f}",
                flush=True,
            )
        elif self.store.exists(HELDOUT_START):
            try:
                self.heldout_start = HeldOut.from_json(self.store.fetch(HELDOUT_START).read_text())
            except (OSError, ValueError) as err:  # the summary then gives the final figures alone
                print(f"warning: {HELDOUT_START}: {err}; the held-out summary will lack the start", flush=True)

    def heldout_summary(self) -> str | None:
        """The held-out line of a finished run (the final policy evaluated now if the last step was
        not an evaluation step); None without toy eval data."""
        if not self._measures_heldout():
            return None
        if self.heldout_last is None or self.heldout_last.step != self.step:
            self.evaluate(self.step)
        return summary_line(self.heldout_start, self.heldout_last)

    def stop_after_failure(self, err: Exception) -> None:
        """A worker failure the pools could not heal: checkpoint the last complete step (unless the
        learner has already moved past it), say how to go on, stop every worker."""
        print(f"error: {err}", file=sys.stderr, flush=True)
        self._ahead = None  # sampled ahead by pools that failed: not waited for
        learner_gone = isinstance(err, LearnerLost)  # its state with it: nothing newer to save
        if self.step > 0 and self.learned_step == self.step and not learner_gone:
            self.checkpoint()
            print(
                f"stopped after step {self.step} (a worker failure); "
                f"continue with: python launch.py --resume {self.store.location}",
                flush=True,
            )
        elif self.step > 0:
            print(
                f"stopped during step {self.step + 1}; the newest checkpoint in "
                f"{self.store.uri('checkpoints')} is where a resume continues",
                flush=True,
            )
        self.finish(export=False)

    def _drop_sampled_ahead(self) -> None:
        """A step sampled ahead that this run will not take (now): its scores are waited for, unused."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.scoring.finish(self.cfg.reward.timeout_s)

    def finish(self, export: bool) -> None:
        self._drop_sampled_ahead()
        self._outputs().merge_rollouts()
        failpoint("driver.finishing")
        if export:
            self.learners.save_hf(self.store, "policy")
        self._outputs().close()
        for pool in (self.rollouts, self.rewards, self.learners):
            pool.shutdown()
        import ray

        ray.shutdown()
