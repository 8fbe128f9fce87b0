"""The learner alone on one GPU: DeepSpeed and transformers, no vLLM and no Ray cluster, so these run
wherever CUDA and DeepSpeed are (tests/gpu/conftest.py: NEEDS_VLLM). What the CPU suite cannot show:
the LearnerWorker puts its batches on the GPU, steps in bfloat16 under ZeRO-2 and ZeRO-3 alike, its
float32 step on the GPU is the CPU's step, and its HF export holds the learner's weights, without a
second copy of the policy on the GPU, and a resumed bfloat16 learner takes the step the first one
would have. Each prints its figures (pytest -s) for the issue's note."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ensured_toy_assets
from tests.gpu.conftest import ROOT
from tests.integration.test_learner_worker import make_batch
from tests.numerics import LINEAR_ADAM_EPS, hf_continuation_logprobs, snapshot, update_gap

NEEDS_VLLM = False
PROMPTS = 8  # x group_size rollouts + 8 SFT rows per step
STEPS = 4


@pytest.fixture(scope="module")
def dist_port() -> int:
    """This process's torch.distributed group (set up once per process) listens here."""
    from wavalign.ports import free_port

    return free_port()


def gpu_worker(model_dir, cfg, port, **learner):
    from actors.learner import LearnerWorker

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.learner = run_cfg.learner.model_copy(update={"warmup_steps": 0, "micro_batch_rows": 8, **learner})
    return LearnerWorker(str(model_dir), run_cfg, master_port=port)


def release_gpu_memory() -> None:
    """After the last reference to a worker is gone: its engine's cycles collected, the cached
    blocks handed back, so that the next worker's peak is its own."""
    gc.collect()
    torch.cuda.empty_cache()


def test_bf16_zero0_2_and_3_learn_alike_and_export_the_learners_weights(
    policy_05b, toy_assets, cfg, dist_port, tmp_path
):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from wavalign.storage import RunStore

    batch = make_batch(toy_assets, cfg, lam=0.5, prompt_count=PROMPTS)
    tokens = sum(len(p) + len(r) for p, r in zip(batch.rollout_prompts, batch.rollout_responses))
    runs = {}
    for stage in (0, 2, 3):  # 0: the embedded default's
        idle = torch.cuda.memory_allocated()  # what the process holds without a learner
        w = gpu_worker(policy_05b, cfg, dist_port, zero_stage=stage, precision="bfloat16", learning_rate=2e-5)
        assert w.device.type == "cuda", w.device
        torch.cuda.reset_peak_memory_stats()
        outs, seconds = [], []
        for _ in range(STEPS):
            start = time.perf_counter()
            outs.append(w.train_step(batch))
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        train_peak = torch.cuda.max_memory_allocated() - idle
        sft = [o["sft_loss"] for o in outs]
        assert all(o["skipped"] == 0 for o in outs), outs
        # a fixed batch at a safe rate: the supervised loss falls at every step
        assert all(a > b for a, b in zip(sft, sft[1:])), sft
        runs[stage] = outs

        # the export: every tensor in the file is the learner's, and the policy is not copied on the GPU
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        w.save_hf(RunStore(str(tmp_path / f"zero{stage}")), "policy")
        export_s = time.perf_counter() - start
        export_extra = torch.cuda.max_memory_allocated() - resident
        export = tmp_path / f"zero{stage}" / "policy"
        saved = load_file(export / "model.safetensors")
        learner = dict(w.full_weights())
        assert saved and all(t.dtype == torch.bfloat16 for t in saved.values())
        assert all(torch.equal(saved[name], learner[name].cpu()) for name in saved), "export differs"
        policy_bytes = sum(t.numel() * t.element_size() for t in saved.values())
        assert export_extra < policy_bytes / 4, (export_extra, policy_bytes)

        reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.bfloat16).to(w.device).eval()
        prompt, continuation = batch.rollout_prompts[0], batch.rollout_responses[0]
        theirs = torch.tensor(hf_continuation_logprobs(reloaded, prompt, continuation))
        ours = torch.tensor(w.continuation_logprobs(prompt, continuation))
        assert torch.allclose(ours, theirs, atol=1e-3), (ours - theirs).abs().max()
        rows = f"{len(batch.rollout_prompts)} rollouts + {len(batch.sft_prompts)} SFT rows"
        print(
            f"\nzero{stage} bf16 on {torch.cuda.get_device_name()}: {rows}, {tokens} rollout tokens per step; "
            f"step s {[round(s, 3) for s in seconds]} (warm {tokens / min(seconds[1:]):.0f} rollout tokens/s); "
            f"peak GPU memory of the learner {train_peak / 2**30:.2f} GiB; "
            f"sft_loss {[round(v, 4) for v in sft]}; export {export_s:.2f} s, {policy_bytes / 2**30:.2f} GiB written, "
            f"{export_extra / 2**20:.1f} MiB extra GPU memory; reloaded logprobs within "
            f"{(ours - theirs).abs().max().item():.1e}"
        )
        del w, reloaded, learner, saved
        release_gpu_memory()
        print(f"zero{stage}: {(torch.cuda.memory_allocated() - idle) / 2**20:.1f} MiB left allocated once released")

    # the same weights, batch and rate: every stage takes ZeRO-2's steps, to bf16 rounding (a
    # stage whose update were off, e.g. an extra optimizer step, would drift from step 2 on)
    for stage in (0, 3):
        for step, (theirs, ours) in enumerate(zip(runs[stage], runs[2]), start=1):
            for key in ("rl_loss", "sft_loss", "loss"):
                assert theirs[key] == pytest.approx(ours[key], rel=1e-2, abs=1e-3), (stage, step, key)
            assert theirs["grad_norm"] == pytest.approx(ours["grad_norm"], rel=5e-2), (stage, step)


def test_a_resumed_bf16_learner_takes_the_same_step(toy_assets, cfg, dist_port, tmp_path):
    """DeepSpeed's checkpoint on the GPU (bf16 weights, float32 master weights and Adam state under
    ZeRO-2): a learner built anew and loaded from it takes the third step as the first learner did,
    to the rounding of GPU kernels that accumulate with atomics."""
    from wavalign.storage import RunStore

    store = RunStore(str(tmp_path))
    batch = make_batch(toy_assets, cfg, lam=0.5, prompt_count=PROMPTS)
    settings = {"zero_stage": 2, "precision": "bfloat16", "learning_rate": 1e-4, "grad_norm_every": 0}
    first = gpu_worker(toy_assets.model_dir, cfg, dist_port, **settings)
    for _ in range(2):
        first.train_step(batch)
    first.save_checkpoint(store, "checkpoint", "step2")
    third = first.train_step(batch)
    after = {name: t.float().cpu() for name, t in first.full_weights()}
    del first
    release_gpu_memory()

    resumed = gpu_worker(toy_assets.model_dir, cfg, dist_port, **settings)
    resumed.load_checkpoint(store, "checkpoint", "step2")
    assert resumed.steps_done == 2
    again = resumed.train_step(batch)
    for key in ("rl_loss", "sft_loss", "loss", "grad_norm", "lr"):
        assert again[key] == pytest.approx(third[key], rel=1e-3, abs=1e-5), key
    # bf16 weights: a last-bit difference in a gradient flips a weight by one bf16 step, so count them
    differing = sum(int((t.float().cpu() != after[name]).sum()) for name, t in resumed.full_weights())
    share = differing / sum(t.numel() for t in after.values())
    losses = f"sft_loss {again['sft_loss']:.6f} vs {third['sft_loss']:.6f}"
    print(f"\nresumed bf16 ZeRO-2, step 3: {losses}; {share:.2e} of the weights differ")
    assert share <= 1e-3, share  # measured: none
    del resumed
    release_gpu_memory()


def one_float32_step(cfg, port: int, out_file: str) -> None:
    """One float32 step of the toy model on this process's device; weights before and after, and
    the step's losses, saved to out_file (run on the GPU here and on the CPU in a subprocess)."""
    assets = ensured_toy_assets(cfg)
    w = gpu_worker(
        assets.model_dir, cfg, port, precision="float32", zero_stage=2, learning_rate=1e-3, adam_eps=LINEAR_ADAM_EPS
    )
    before = snapshot((name, t.cpu()) for name, t in w.full_weights())
    out = w.train_step(make_batch(assets, cfg, lam=0.5, prompt_count=PROMPTS))
    after = snapshot((name, t.cpu()) for name, t in w.full_weights())
    torch.save({"before": before, "after": after, "out": out, "device": str(w.device)}, out_file)


def test_the_float32_gpu_step_is_the_cpu_step(toy_assets, cfg, dist_port, tmp_path):
    """Same model, batch and settings on the GPU (here) and on the CPU (a subprocess with no CUDA
    device and DeepSpeed's CPU accelerator): losses, gradient norm and update agree to float32
    reduction-order noise (tests/numerics.py). A batch left on the CPU, a loss or mask computed on
    the wrong device's copy, or a device-dependent branch in the step shows up here."""
    from wavalign.ports import free_port

    gpu_file, cpu_file = tmp_path / "gpu.pt", tmp_path / "cpu.pt"
    one_float32_step(cfg, dist_port, str(gpu_file))
    code = (
        "from tests.conftest import toy_config; from tests.gpu.test_learner_gpu import one_float32_step; "
        f"one_float32_step(toy_config(), {free_port()}, {str(cpu_file)!r})"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)  # this process's group; the subprocess sets up its own
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    gpu, cpu = torch.load(gpu_file), torch.load(cpu_file)
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu", (gpu["device"], cpu["device"])
    for key in ("rl_loss", "sft_loss", "loss"):  # rl_loss is ~0 (advantages sum to 0): absolute noise
        assert gpu["out"][key] == pytest.approx(cpu["out"][key], rel=1e-5, abs=1e-6), key
    assert gpu["out"]["grad_norm"] == pytest.approx(cpu["out"]["grad_norm"], rel=1e-4)
    assert all(torch.equal(gpu["before"][n], cpu["before"][n]) for n in gpu["before"])
    gap = update_gap(cpu["before"], cpu["after"], gpu["after"])
    print(
        f"\nfloat32 step, GPU vs CPU: loss {gpu['out']['loss']:.6f} vs {cpu['out']['loss']:.6f}, grad_norm "
        f"{gpu['out']['grad_norm']:.6f} vs {cpu['out']['grad_norm']:.6f}, update gap {gap:.3f} (at most 1 passes)"
    )
    assert gap <= 1
