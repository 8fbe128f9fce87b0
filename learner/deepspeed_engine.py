"""The only file that imports DeepSpeed: the policy under a DeepSpeed engine (ZeRO 0-3, fp32/bf16,
AdamW with the method's settings, warm-up + schedule), one optimizer step over any number of
micro-batches, full-weight export in buckets (gathered under ZeRO-3), and checkpoints.

On CPU DeepSpeed picks its CPU accelerator and the gloo backend; the optimizer is torch's AdamW
(DeepSpeed's fused/CPU Adam needs compiled ops), which ZeRO wraps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch

from learner.schedule import lr_factor
from wavalign.config import LearnerConfig
from wavalign.heavy_imports import collector_paused


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
        trust_remote_code: bool = False,
        frozen: tuple[str, ...] = (),
    ) -> None:
        """trust_remote_code: the checkpoint's own modeling code (model.trust_remote_code); frozen:
        name prefixes of modules kept as they are (model.extra_modules), left out of the optimizer."""
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK="0",
        )
        with collector_paused():
            import deepspeed
            from transformers import AutoModelForCausalLM

        self._deepspeed = deepspeed
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.trust_remote_code = trust_remote_code
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_dtype(cfg), trust_remote_code=trust_remote_code)
        freeze(model, frozen)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.learning_rate,
            betas=tuple(cfg.adam_betas),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
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
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        undo_state_initialising_step(self.engine.optimizer, optimizer)
        self.optimizer = optimizer  # torch's AdamW, inside DeepSpeed's wrapper
        self.skipped_steps = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def device(self) -> torch.device:
        """Where the policy lives (cpu, or this rank's GPU): inputs must be put there."""
        return self.engine.device

    def step(self, micro_losses: Sequence[Callable[[], torch.Tensor]]) -> dict[str, float]:
        """One optimizer step. Each callable runs one micro-batch's forward and returns its share of
        the step's loss (already weighted), so the accumulated gradient is that of the whole batch.

        A non-finite loss or gradient skips the step on every rank, leaves weights, optimizer and
        schedule untouched, and is counted. A non-finite loss still goes through backward: every
        rank must take part in each gradient reduction (or the others hang), and its non-finite
        gradients reach the check below on all ranks alike."""
        total, finite_loss = 0.0, True
        for index, loss_of in enumerate(micro_losses):
            self.engine.set_gradient_accumulation_boundary(index == len(micro_losses) - 1)
            loss = loss_of()
            finite_loss &= bool(torch.isfinite(loss.detach()))
            self.engine.backward(loss, scale_wrt_gas=False)
            total += float(loss.detach())
        lr = self.lr  # the rate this step uses
        # ZeRO-0 neither checks nor reports the gradient norm; ZeRO 1-3 do both (all-reduced) in step()
        own_norm = self._gradient_norm() if self.cfg.zero_stage == 0 else None
        if own_norm is not None and not math.isfinite(own_norm):
            self.engine.zero_grad()
            applied = False
        else:
            self.engine.step()
            applied = self.engine.was_step_applied()
        if not applied:
            self.skipped_steps += 1
            return {
                "loss": total,
                "grad_norm": float("nan"),
                "lr": lr,
                "skipped": 1.0,
                "nonfinite_loss": float(not finite_loss),
            }
        grad_norm = own_norm if own_norm is not None else float(self.engine.get_global_grad_norm())
        return {"loss": total, "grad_norm": grad_norm, "lr": lr, "skipped": 0.0, "nonfinite_loss": 0.0}

    def _gradient_norm(self) -> float:
        """The L2 norm of the (ZeRO-0: already all-reduced, so every rank agrees) gradients."""
        grads = [p.grad.float() for p in self.module.parameters() if p.grad is not None]
        return (
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
        )

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def full_weights(self, device: torch.device | str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) per parameter, gathered one at a time under ZeRO-3 (never all at once).
        A tied parameter comes once under each of its names (the LM head of tied embeddings as
        `lm_head.weight` too): vLLM's layerwise reload keeps the old tensors of any layer that
        receives nothing, so a head left out would stay at the weights the engine started with.
        device: each tensor copied there (host memory for an export); None: the parameter itself,
        or under ZeRO-3 a copy beside it (the gathered buffer is released after each)."""
        for name, param in self.module.named_parameters(remove_duplicate=False):
            if self.cfg.zero_stage == 3:
                with self._deepspeed.zero.GatheredParameters([param]):
                    yield name, param.detach().to(device or param.device, copy=True)
            else:
                yield name, param.detach() if device is None else param.detach().to(device, copy=True)

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
            # every rank takes part in each ZeRO-3 gather; rank 0 keeps the weights, copied to host
            # memory one tensor at a time (a GPU learner holds no second policy on its device)
            state = {}
            for name, tensor in self.full_weights("cpu" if self.rank == 0 else None):
                if self.rank == 0:
                    state[name] = tensor
            if self.rank == 0:
                self.module.save_pretrained(staging, state_dict=state, safe_serialization=True)
                AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=self.trust_remote_code).save_pretrained(
                    staging
                )
                # the checkpoint's own modeling code, which its config names (auto_map)
                for code in Path(tokenizer_dir).glob("*.py"):
                    if not (staging / code.name).exists():
                        shutil.copy2(code, staging / code.name)
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


def frozen_policy(
    model_path: str, cfg: LearnerConfig, device: torch.device | str = "cpu", trust_remote_code: bool = False
) -> torch.nn.Module:
    """The initial policy, frozen: the reference of the KL term and of DPO (method §3.4, §8)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=_dtype(cfg), trust_remote_code=trust_remote_code
    ).eval()
    return model.requires_grad_(False).to(device)


def undo_state_initialising_step(wrapper, adamw: torch.optim.AdamW) -> None:
    """bf16 without ZeRO (zero_stage 0: DeepSpeed's FP16_UnfusedOptimizer, float32 master weights)
    creates the optimizer's state with one step on zero gradients. To torch's AdamW that is a step:
    it counts it, so its bias correction shrinks the first real update to 0.73 of the rate (β 0.9,
    0.95) and corrects every later one for a step too many, and it applies one weight decay. Undone:
    the state cleared (AdamW makes it again at the first real step), the master weights copied back
    from the bf16 weights they were cloned from. ZeRO 1-3 and float32 create no such step."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(wrapper, FP16_UnfusedOptimizer):
        return
    adamw.state.clear()
    with torch.no_grad():
        for masters, weights in zip(wrapper.fp32_groups, wrapper.fp16_groups):
            for master, weight in zip(masters, weights):
                master.copy_(weight)


def freeze(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """The parameters under `prefixes` kept as they are: no gradient, not in the optimizer (AdamW's
    weight decay would shrink them even without one). Each prefix must name some parameter: a
    checkpoint loaded without its own code (model.trust_remote_code) has lost such modules."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            modules = sorted({name.split(".")[0] for name in names})
            raise ValueError(
                f"model.extra_modules: {prefix!r} names no parameter of the loaded model (its modules: "
                f"{', '.join(modules)}); a checkpoint that ships its own modeling code needs model.trust_remote_code"
            )
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)


def _dtype(cfg: LearnerConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.precision == "bfloat16" else torch.float32
