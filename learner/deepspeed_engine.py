"""The only file that imports DeepSpeed: the policy under a DeepSpeed engine (ZeRO 0-3, fp32/bf16,
AdamW with the method's settings, warm-up + schedule), one optimizer step over any number of
micro-batches, full-weight export in buckets (gathered under ZeRO-3), and checkpoints.

On CPU DeepSpeed picks its CPU accelerator and the gloo backend; the optimizer is torch's AdamW
(DeepSpeed's fused/CPU Adam needs compiled ops), which ZeRO wraps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import torch

from learner.schedule import lr_factor
from wavalign.config import LearnerConfig


class DeepSpeedEngine:
    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        total_steps: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
    ) -> None:
        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0"
        )
        import deepspeed
        from transformers import AutoModelForCausalLM

        self._deepspeed = deepspeed
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        dtype = torch.bfloat16 if cfg.precision == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.schedule)
        )
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.precision == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.skipped_steps = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def step(self, micro_losses: Sequence[Callable[[], torch.Tensor]]) -> dict[str, float]:
        """One optimizer step. Each callable runs one micro-batch's forward and returns its share of
        the step's loss (already weighted), so the accumulated gradient is that of the whole batch.
        A non-finite loss skips the step, leaves the weights untouched, and is counted. (Non-finite
        gradients under a finite loss are not caught yet: the learner issue's remaining work.)"""
        total = 0.0
        for index, loss_of in enumerate(micro_losses):
            self.engine.set_gradient_accumulation_boundary(index == len(micro_losses) - 1)
            loss = loss_of()
            if not torch.isfinite(loss.detach()):
                return self._skip("loss")
            self.engine.backward(loss, scale_wrt_gas=False)
            total += float(loss.detach())
        lr = self.lr  # the rate this step uses
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return {"loss": total, "grad_norm": float(norm) if norm is not None else float("nan"), "lr": lr}

    def _skip(self, what: str) -> dict[str, float]:
        self.engine.zero_grad()
        self.skipped_steps += 1
        return {"loss": float("nan"), "grad_norm": float("nan"), "lr": self.lr, "skipped": what}

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) per parameter, gathered one at a time under ZeRO-3 (never all at once)."""
        for name, param in self.module.named_parameters():
            if self.cfg.zero_stage == 3:
                with self._deepspeed.zero.GatheredParameters([param]):
                    yield name, param.detach().clone()
            else:
                yield name, param.detach()

    def save_hf(self, directory: str, tokenizer_dir: str) -> None:
        """The policy as an HF directory (safetensors + config + tokenizer) that transformers and vLLM
        load, written into a temporary directory beside the target and renamed into place."""
        import shutil
        import tempfile
        from pathlib import Path

        from transformers import AutoTokenizer

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            state = {name: tensor.clone() for name, tensor in self.full_weights()}
            if self.rank == 0:
                self.module.save_pretrained(staging, state_dict=state, safe_serialization=True)
                AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(staging)
                staging.chmod(0o755)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def save_checkpoint(self, directory: str, tag: str, client_state: dict | None = None) -> None:
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state or {})

    def load_checkpoint(self, directory: str, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(directory, tag=tag)
        return client_state or {}
