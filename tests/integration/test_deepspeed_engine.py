"""One DeepSpeed step (ZeRO-2 and ZeRO-3, two accumulated micro-batches) on the tiny model matches
a plain torch AdamW step with the same clipping; a non-finite loss, or a non-finite gradient under a
finite loss, skips the step and leaves the weights untouched."""

from functools import partial

import pytest
import torch

from tests.numerics import LINEAR_ADAM_EPS, snapshot, update_gap
from wavalign.config import LearnerConfig


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_one_step_matches_torch_adamw(toy_assets, dist_port, stage):
    from transformers import AutoModelForCausalLM

    from learner.deepspeed_engine import DeepSpeedEngine

    # Adam's first step linear in the gradient (eps 1.0), so the two float32 paths (DeepSpeed's flat
    # partitions vs torch's per-parameter tensors) compare to their rounding: see tests/numerics.py
    cfg = LearnerConfig(
        zero_stage=stage,
        precision="float32",
        learning_rate=1e-3,
        warmup_steps=0,
        schedule="constant",
        adam_eps=LINEAR_ADAM_EPS,
    )
    engine = DeepSpeedEngine(str(toy_assets.model_dir), cfg, total_steps=10, master_port=dist_port)
    reference = AutoModelForCausalLM.from_pretrained(toy_assets.model_dir)
    before = snapshot(reference.named_parameters())
    optimizer = torch.optim.AdamW(
        reference.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=LINEAR_ADAM_EPS, weight_decay=0.01
    )
    torch.manual_seed(stage)
    ids = torch.randint(0, reference.config.vocab_size, (4, 12))

    def half(model, rows):
        return model(input_ids=ids[rows], labels=ids[rows]).loss * 0.5

    out = engine.step([lambda: half(engine.engine, slice(0, 2)), lambda: half(engine.engine, slice(2, 4))])
    loss = half(reference, slice(0, 2)) + half(reference, slice(2, 4))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.2)
    optimizer.step()
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert out["grad_norm"] == pytest.approx(norm.item(), rel=1e-4)
    trained = snapshot(engine.full_weights())
    assert update_gap(before, trained, snapshot(reference.named_parameters())) <= 1

    skipped = engine.step([lambda: half(engine.engine, slice(0, 2)) * float("nan")])
    assert skipped["skipped"] == 1 and skipped["nonfinite_loss"] == 1 and engine.skipped_steps == 1
    assert all(torch.equal(trained[name], p.double()) for name, p in engine.full_weights())  # untouched

    def nan_gradient():  # the loss is finite, its gradient is not
        return _NanGradient.apply(engine.engine(input_ids=ids).logits).mean()

    lr = engine.lr
    skipped = engine.step([lambda: half(engine.engine, slice(0, 2)), nan_gradient])
    assert skipped["skipped"] == 1 and skipped["nonfinite_loss"] == 0 and engine.skipped_steps == 2
    assert all(torch.equal(trained[name], p.double()) for name, p in engine.full_weights())
    assert engine.lr == lr


class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def language_model_loss(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("stage", [0, 2])
def test_a_bf16_step_is_one_adamw_step_of_the_full_rate(toy_assets, dist_port, stage):
    """bf16 (the GPU setting: DeepSpeed keeps float32 master weights) steps as float32 does: one
    engine step is one AdamW step, moving the weights as far. ZeRO-0's wrapper creates the optimizer
    state with a step on zero gradients, which the engine undoes: left in, AdamW counts two steps
    and the first update shrinks to ~0.73 of float32's (measured: 764 vs 1050 summed over weights)."""
    from learner.deepspeed_engine import DeepSpeedEngine

    torch.manual_seed(stage)
    ids = torch.randint(0, 600, (4, 12))
    moved = {}
    for precision in ("float32", "bfloat16"):
        cfg = LearnerConfig(
            zero_stage=stage, precision=precision, learning_rate=1e-3, warmup_steps=0, schedule="constant"
        )
        engine = DeepSpeedEngine(str(toy_assets.model_dir), cfg, total_steps=10, master_port=dist_port)
        before = snapshot(engine.full_weights())
        assert engine.step([partial(language_model_loss, engine.engine, ids)])["skipped"] == 0
        after = snapshot(engine.full_weights())
        moved[precision] = sum(float((after[name] - before[name]).abs().sum()) for name in before)
        assert {int(state["step"]) for state in engine.optimizer.state.values()} == {1}, precision
    # the bf16 weights are the float32 masters rounded: the same update, to that rounding
    assert moved["bfloat16"] == pytest.approx(moved["float32"], rel=0.05), moved


@pytest.mark.parametrize("stage", [2, 3])
def test_save_load_continue_is_bit_identical(toy_assets, dist_port, tmp_path, stage):
    from learner.deepspeed_engine import DeepSpeedEngine

    cfg = LearnerConfig(zero_stage=stage, precision="float32", learning_rate=1e-3, warmup_steps=1, schedule="cosine")
    torch.manual_seed(7)
    batches = [torch.randint(0, 600, (2, 10)) for _ in range(2)]

    def run_step(engine, ids):
        return engine.step([lambda: engine.engine(input_ids=ids, labels=ids).loss])

    straight = DeepSpeedEngine(str(toy_assets.model_dir), cfg, total_steps=4, master_port=dist_port)
    for ids in batches:
        run_step(straight, ids)
    expected = {name: t.clone() for name, t in straight.full_weights()}

    first = DeepSpeedEngine(str(toy_assets.model_dir), cfg, total_steps=4, master_port=dist_port)
    run_step(first, batches[0])
    first.save_checkpoint(str(tmp_path), "step1", {"step": 1})
    resumed = DeepSpeedEngine(str(toy_assets.model_dir), cfg, total_steps=4, master_port=dist_port)
    assert resumed.load_checkpoint(str(tmp_path), "step1")["step"] == 1
    out = run_step(resumed, batches[1])
    assert out["lr"] == pytest.approx(1e-3)  # step 1: warm-up over, cosine at its start (the scheduler resumed too)
    assert all(torch.equal(expected[name], t) for name, t in resumed.full_weights())
