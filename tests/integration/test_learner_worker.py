"""The LearnerWorker on the tiny model with DeepSpeed (CPU): a mixed RL + SFT step runs, learns,
and does not depend on how the batch is cut into micro-batches; stale rollouts get the importance
ratio, the KL term uses a frozen reference, DPO steps learn the preference."""

import dataclasses
import math

import pytest
import torch

from learner.advantages import group_advantages
from tests.numerics import LINEAR_ADAM_EPS, hf_continuation_logprobs, snapshot, update_gap
from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout


def make_batch(toy_assets, cfg, lam, prompt_count=2):
    from wavalign.messages import TrainBatch

    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    table = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128)
    rows = table.rows[:prompt_count]
    G = cfg.rollout.group_size
    prompts, responses, rewards = [], [], []
    for r in rows:  # G "rollouts": the reference, and truncations of it (no eos: not well-formed)
        for g in range(G):
            prompts.append(r.prompt_token_ids)
            responses.append(r.reference_token_ids if g == 0 else r.reference_token_ids[: 6 + 3 * g])
            rewards.append(5.0 if g == 0 else 1.0 + g)
    advantages = group_advantages(torch.tensor(rewards).view(len(rows), G)).flatten().tolist()
    return TrainBatch(
        prompts, responses, advantages, [r.prompt_token_ids for r in rows], [r.reference_token_ids for r in rows], lam
    )


def worker(toy_assets, cfg, micro_batch_rows, port, grad_norm_every=0, learner=None, **algorithm):
    from actors.learner import LearnerWorker

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.learner = run_cfg.learner.model_copy(
        update={
            "micro_batch_rows": micro_batch_rows,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
            "grad_norm_every": grad_norm_every,
            **(learner or {}),
        }
    )
    run_cfg.algorithm = run_cfg.algorithm.model_copy(update=algorithm)
    return LearnerWorker(str(toy_assets.model_dir), run_cfg, master_port=port)


LINEAR = {"adam_eps": LINEAR_ADAM_EPS}  # Adam's first step linear in the gradient: see tests/numerics.py


def test_micro_batching_leaves_the_update_unchanged(toy_assets, cfg, dist_port):
    batch = make_batch(toy_assets, cfg, lam=0.5)
    # the per-modality gradient norms (extra backward passes) must not touch the update either
    a = worker(toy_assets, cfg, 2, dist_port, grad_norm_every=1, learner=LINEAR)
    b = worker(toy_assets, cfg, 64, dist_port, learner=LINEAR)
    before = snapshot(a.full_weights())
    out_a, out_b = a.train_step(batch), b.train_step(batch)
    assert out_a["grad_norm_text"] > 0 and out_a["grad_norm_speech"] > 0 and "grad_norm_text" not in out_b
    assert out_a["rl_loss"] == pytest.approx(out_b["rl_loss"], rel=1e-5, abs=1e-7)
    assert out_a["sft_loss"] == pytest.approx(out_b["sft_loss"], rel=1e-5)
    assert out_a["grad_norm"] == pytest.approx(out_b["grad_norm"], rel=1e-5)
    assert update_gap(before, snapshot(a.full_weights()), snapshot(b.full_weights())) <= 1


def test_mixed_steps_report_what_they_did_and_lower_the_objective(toy_assets, cfg, dist_port):
    # A fixed batch at a small learning rate with no warm-up: every step goes downhill on the mixed
    # objective for any model that passed the warm-start gates (at 1e-3 a step may overshoot the
    # warm start's small SFT loss, and whether it does depends on the CPU's rounding).
    w = worker(toy_assets, cfg, 8, dist_port, learner={"learning_rate": 3e-5})
    batch = make_batch(toy_assets, cfg, lam=0.3)
    first = w.train_step(batch)
    assert first["lambda"] == 0.3 and first["lr"] == pytest.approx(3e-5, rel=1e-12) and first["skipped"] == 0
    for key in ("rl_loss", "sft_loss", "loss", "grad_norm", "text_entropy", "speech_entropy"):
        assert math.isfinite(first[key]), key
    assert (
        first["sft_loss"] > 0 and first["grad_norm"] > 0 and first["text_entropy"] > 0 and first["speech_entropy"] > 0
    )
    assert first["loss"] == pytest.approx(0.3 * first["rl_loss"] + 0.7 * first["sft_loss"], rel=1e-5)
    losses = [first["loss"]] + [w.train_step(batch)["loss"] for _ in range(3)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0], losses


def test_exported_hf_directory_holds_the_learners_weights(toy_assets, cfg, dist_port, tmp_path):
    """save_hf writes an HF directory (safetensors, config, tokenizer) whose weights are the learner's,
    into the run's storage: here a `file://` URI, so through the rank's staging folder, published
    file by file and then dropped. (vLLM serving such a directory: the stale run in test_pipeline.py
    starts from the main job's.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wavalign.storage import RunStore

    w = worker(toy_assets, cfg, 8, dist_port)
    w.train_step(make_batch(toy_assets, cfg, lam=0.5))
    store = RunStore(f"file://{tmp_path}")
    w.save_hf(store, "policy-v1")
    export = tmp_path / "policy-v1"
    assert not (store.private("rank0").local / "policy-v1").exists()
    assert (export / "model.safetensors").is_file() and (export / "tokenizer.json").is_file()
    assert len(AutoTokenizer.from_pretrained(export)) == len(AutoTokenizer.from_pretrained(toy_assets.model_dir))
    reloaded = AutoModelForCausalLM.from_pretrained(export)
    learner_weights = dict(w.full_weights())
    assert all(torch.equal(learner_weights[n], p) for n, p in reloaded.named_parameters())
    initial = AutoModelForCausalLM.from_pretrained(toy_assets.model_dir)
    assert not all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), initial.parameters()))  # trained
    assert not list(tmp_path.glob(".policy-v1.*"))  # the atomic write left no staging directory


def test_two_data_parallel_workers_equal_one(toy_assets, cfg, dist_port, ray_cluster):
    from actors.learner import LearnerWorker
    from wavalign.messages import TrainBatch
    from wavalign.ports import free_port

    ray = ray_cluster
    batch = make_batch(toy_assets, cfg, lam=0.5)
    single = worker(toy_assets, cfg, 8, dist_port, learner=LINEAR)
    before = snapshot(single.full_weights())
    single.train_step(batch)

    G, P = cfg.rollout.group_size, len(batch.sft_prompts)
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.learner = run_cfg.learner.model_copy(
        update={
            "micro_batch_rows": 8,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
            "num_workers": 2,
            "zero_stage": 2,
            **LINEAR,
        }
    )
    port = free_port()
    remote = ray.remote(num_cpus=1)(LearnerWorker)
    ranks = [
        remote.remote(str(toy_assets.model_dir), run_cfg, rank=r, world_size=2, master_port=port) for r in range(2)
    ]
    try:
        halves = []
        for r in range(2):  # each rank: its half of the prompts, with their G rollouts and SFT rows
            prompts = slice(r * P // 2, (r + 1) * P // 2)
            rows = slice(prompts.start * G, prompts.stop * G)
            halves.append(
                TrainBatch(
                    batch.rollout_prompts[rows],
                    batch.rollout_responses[rows],
                    batch.advantages[rows],
                    batch.sft_prompts[prompts],
                    batch.sft_targets[prompts],
                    batch.lam,
                )
            )
        ray.get([w.train_step.remote(h) for w, h in zip(ranks, halves)], timeout=600)
        weights = ray.get(ranks[0].full_weights.remote(), timeout=600)
    finally:
        for w in ranks:
            ray.kill(w)
    # the all-reduce sums the ranks' float32 gradients in another order than one process does
    assert update_gap(before, snapshot(single.full_weights()), snapshot(weights)) <= 1


def test_stale_rollouts_get_the_clipped_importance_ratio(toy_assets, cfg, dist_port):
    from transformers import AutoModelForCausalLM

    batch = make_batch(toy_assets, cfg, lam=1.0)
    model = AutoModelForCausalLM.from_pretrained(toy_assets.model_dir)
    current = [hf_continuation_logprobs(model, p, r) for p, r in zip(batch.rollout_prompts, batch.rollout_responses)]
    on_policy = worker(toy_assets, cfg, 8, dist_port).train_step(batch)
    # sampled by these very weights but labelled stale: ratio 1 (to float error), the on-policy gradient
    stale = worker(toy_assets, cfg, 8, dist_port)
    out = stale.train_step(dataclasses.replace(batch, staleness=1, rollout_logprobs=current))
    assert out["clip_frac"] == 0
    assert out["rl_loss"] == pytest.approx(on_policy["rl_loss"], abs=1e-5)
    assert out["grad_norm"] == pytest.approx(on_policy["grad_norm"], rel=1e-4)  # HF's unpadded forward vs the batch's
    # a sampler far from the policy: ratios leave [0.8, 1.2] and are clipped
    shifted = [[lp - 1.0 for lp in row] for row in current]
    assert (
        worker(toy_assets, cfg, 8, dist_port).train_step(
            dataclasses.replace(batch, staleness=1, rollout_logprobs=shifted)
        )["clip_frac"]
        > 0
    )
    with pytest.raises(ValueError, match="rollout_logprobs"):
        stale.train_step(dataclasses.replace(batch, staleness=2))


def test_kl_to_the_frozen_reference(toy_assets, cfg, dist_port):
    assert worker(toy_assets, cfg, 8, dist_port).reference is None  # method default: no reference model
    w = worker(toy_assets, cfg, 8, dist_port, kl_beta_text=0.001, kl_beta_speech=0.001)
    batch = make_batch(toy_assets, cfg, lam=0.5)
    first = w.train_step(batch)
    assert first["kl_text"] == pytest.approx(0, abs=1e-7) and first["kl_speech"] == pytest.approx(0, abs=1e-7)
    second = w.train_step(batch)
    assert second["kl_text"] > 0 and second["kl_speech"] > 0


def test_dpo_steps_learn_the_preference(toy_assets, cfg, dist_port):
    from wavalign.messages import DpoBatch

    batch = make_batch(toy_assets, cfg, lam=0.5)
    G = cfg.rollout.group_size
    pairs = DpoBatch(
        batch.sft_prompts,
        batch.sft_targets,
        [batch.rollout_responses[i * G + 1] for i in range(len(batch.sft_prompts))],
    )
    with pytest.raises(ValueError, match="reference"):
        worker(toy_assets, cfg, 8, dist_port).dpo_step(pairs)
    a = worker(toy_assets, cfg, 1, dist_port, learner=LINEAR, objective="dpo")
    b = worker(toy_assets, cfg, 8, dist_port, learner=LINEAR, objective="dpo")
    before = snapshot(a.full_weights())
    first, first_b = a.dpo_step(pairs), b.dpo_step(pairs)
    assert first["dpo_loss"] == pytest.approx(0.6931472, abs=1e-5) and first["dpo_pairs"] == len(pairs.prompts)  # z = 0
    assert first_b["dpo_loss"] == pytest.approx(first["dpo_loss"], abs=1e-6)
    assert update_gap(before, snapshot(a.full_weights()), snapshot(b.full_weights())) <= 1  # micro-batching
    learner = worker(toy_assets, cfg, 1, dist_port, learner={"learning_rate": 1e-4}, objective="dpo")
    first = learner.dpo_step(pairs)
    for _ in range(3):
        last = learner.dpo_step(pairs)
    assert last["dpo_loss"] < first["dpo_loss"] and last["dpo_accuracy"] == 1.0 and last["dpo_margin"] > 0
    anchored = worker(toy_assets, cfg, 8, dist_port, objective="dpo", dpo_sft_weight=0.5).dpo_step(pairs)
    assert anchored["sft_loss"] > 0 and anchored["loss"] == pytest.approx(
        anchored["dpo_loss"] + 0.5 * anchored["sft_loss"], rel=1e-5
    )
