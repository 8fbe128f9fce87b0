"""LearnerWorker: applies the WavAlign update to the policy with DeepSpeed.

One `train_step` = one optimizer step over the step's rollout rows (policy gradient on the chosen
modality, text by default) and SFT rows (teacher forcing on the references, all tokens by default),
mixed by the step's λ, in micro-batches whose gradients accumulate to the whole batch's.
`dpo_step` is the DPO variant (method §8). The step's math is learner/step.py (pure, unit-tested);
this worker builds the engine and the frozen reference, moves the batch to the learner's device
and hands the step's micro-batch losses to the optimizer step. A plain class; the driver makes it
a Ray worker at the call site.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import torch

from actors.weight_sync import LearnerSync, Worker
from learner.deepspeed_engine import DeepSpeedEngine, frozen_policy
from learner.step import DpoStep, MixedStep
from wavalign.config import PipelineConfig
from wavalign.failpoints import failpoint
from wavalign.messages import DpoBatch, SyncReport, TrainBatch
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.node_inputs import local_model_dir
from wavalign.storage import RunStore
from wavalign.worker_log import log_worker_output


class LearnerWorker:
    def __init__(
        self, model_path: str, cfg: PipelineConfig, rank: int = 0, world_size: int = 1, master_port: int = 29500
    ) -> None:
        """model_path: a folder this node sees, or a URI, copied to this node (wavalign/node_inputs.py)."""
        log_worker_output()  # a run's worker: its output into <run>/logs/ too
        model_path = str(local_model_dir(model_path))
        _, self.layout = load_tokenizer_and_layout(model_path, cfg.model.layout, cfg.model.trust_remote_code)
        self.cfg, self.model_path, self.rank = cfg, model_path, rank
        if cfg.learner.torch_threads:
            torch.set_num_threads(cfg.learner.torch_threads)
        mc = cfg.model
        self.engine = DeepSpeedEngine(
            model_path,
            cfg.learner,
            cfg.run.steps,
            rank=rank,
            world_size=world_size,
            master_port=master_port,
            trust_remote_code=mc.trust_remote_code,
            frozen=tuple(mc.extra_modules),
        )
        self.device = self.engine.device  # batches are built on CPU and moved there (a GPU learner)
        self.reference = (
            frozen_policy(model_path, cfg.learner, self.device, mc.trust_remote_code)
            if cfg.algorithm.needs_reference
            else None
        )
        self.steps_done = 0
        rc = cfg.rollout
        self.weight_sync = LearnerSync(
            rc.weight_transfer_backend,
            rank,
            self.rollout_weights,
            chunk_bytes=int(rc.weight_bucket_mb * 2**20),
            timeout_s=rc.update_timeout_s,
            region_dir=rc.weight_staging_dir,
            # ipc, unpacked: handles to the parameters themselves, no copy. Under ZeRO-3 the gathered
            # copies would all stay alive until the workers finish, so they go in packed buffers.
            packed=cfg.learner.zero_stage == 3,
        )

    def ready(self) -> dict[str, int]:
        return {"pid": os.getpid(), "steps_done": self.steps_done}

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        failpoint("learner.train_step")  # fault tests: the learner dies mid-step (as under kill -9, or OOM)
        learner = self.cfg.learner
        step = MixedStep(
            batch, self.layout, self.cfg.algorithm, self.cfg.rollout.group_size, self.device, self.reference
        )
        if learner.grad_norm_every and self.steps_done % learner.grad_norm_every == 0:
            step.stats.update(self._modality_grad_norms(step))
        result = self.engine.step(step.micro_losses(self.engine.engine, learner.micro_batch_rows))
        self.steps_done += 1
        return {**step.stats, **result, "lambda": batch.lam}

    def _modality_grad_norms(self, step: MixedStep) -> dict[str, float]:
        """MixedStep.modality_grad_norms on the bare module, outside DeepSpeed. ZeRO-3 partitions the
        module's parameters, so there it is not computed (NaN)."""
        if self.cfg.learner.zero_stage == 3:
            return {"grad_norm_text": float("nan"), "grad_norm_speech": float("nan")}
        return step.modality_grad_norms(self.engine.module, self.cfg.learner.micro_batch_rows)

    def dpo_step(self, batch: DpoBatch) -> dict[str, float]:
        """One DPO optimizer step (learner/step.py: DpoStep) against the frozen reference."""
        if self.reference is None:
            raise ValueError("dpo_step needs the frozen reference: set algorithm.objective: dpo")
        step = DpoStep(batch, self.layout, self.cfg.algorithm, self.reference, self.device)
        result = self.engine.step(step.micro_losses(self.engine.engine, self.cfg.learner.micro_batch_rows))
        self.steps_done += 1
        return {**step.stats, **result}

    def full_weights(self):
        return list(self.engine.full_weights())

    def rollout_weights(self):
        """What the rollout engines hold: every weight but the modules vLLM's model lacks
        (model.extra_modules), which vLLM's loader would refuse."""
        skipped = tuple(self.cfg.model.extra_modules)
        return ((name, tensor) for name, tensor in self.engine.full_weights() if not name.startswith(skipped))

    # The weight sync (actors/weight_sync.py): this rank's side of vLLM's trainer engine.

    def send_weights(self, version: int, workers: Sequence[Worker]) -> SyncReport:
        """The policy's weights into `workers` as `version`; every rank calls it (ZeRO-3 gathers
        collectively), rank 0 sends and reports."""
        report = self.weight_sync.sync(version, workers)
        if self.cfg.rollout.colocate:
            torch.cuda.empty_cache()  # hand back the learner's cached blocks before vLLM's KV cache wakes
        return report

    def bring_up_worker(self, worker: Worker) -> dict:
        """The last version sent, into one worker that came up since (rank 0; runs beside a step)."""
        return self.weight_sync.bring_up(worker)

    def release_weight_region(self) -> None:
        self.weight_sync.release_region()

    def close_weight_sync(self) -> None:
        self.weight_sync.close()

    def continuation_logprobs(self, prompt: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """log p(continuation[t] | prompt, continuation[:t]) under the learner's weights (one rank,
        no DeepSpeed step): what the rollout workers must reproduce after a sync."""
        module = self.engine.module
        ids = torch.tensor([[*prompt, *continuation]], device=next(module.parameters()).device)
        with torch.no_grad():
            logits = module(input_ids=ids).logits[0].float()  # (L, V)
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # position t-1 predicts token t
        return logp.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1).tolist()

    # The run's storage (wavalign/storage.py): this rank writes where it runs, then publishes; with a
    # URI through a staging folder of its own, dropped once the files are stored.

    def check_storage(self, store: RunStore) -> None:
        """The run's folder must be the driver's: a path that is not shared would split the run."""
        if not store.exists("config.yaml"):
            raise RuntimeError(
                f"run.output_dir: {store.location} is not the driver's folder on this node "
                f"({socket.gethostname()}, pid {os.getpid()}): use a folder every node mounts at the same path, "
                "or a URI (s3://...)"
            )

    def save_hf(self, store: RunStore, relative: str) -> None:
        """The policy as an HF directory; every rank calls it (ZeRO-3 gathers), rank 0 writes it."""
        mine = store.private(f"rank{self.rank}")
        self.engine.save_hf(str(mine.local / relative), self.model_path)
        if self.rank == 0:
            mine.publish(relative)
        mine.drop_local(relative)

    def save_checkpoint(self, store: RunStore, relative: str, tag: str) -> None:
        """DeepSpeed state (weights, optimizer, schedule) of this rank; every rank calls it."""
        mine = store.private(f"rank{self.rank}")
        self.engine.save_checkpoint(str(mine.local / relative), tag, {"steps_done": self.steps_done})
        mine.publish(relative)
        mine.drop_local(relative)

    def load_checkpoint(self, store: RunStore, relative: str, tag: str) -> None:
        mine = store.private(f"rank{self.rank}")
        local = mine.fetch(relative)
        self.steps_done = int(self.engine.load_checkpoint(str(local), tag).get("steps_done", 0))
        mine.drop_local(relative)
