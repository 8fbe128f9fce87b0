"""The architecture families spoken-dialogue LMs are built on (wavalign/toy/families.py: Qwen2 with
an untied head, Llama, Qwen3, GLM-4; tiny, random, the toy tokenizer), a checkpoint that ships its
own modeling code and holds heads vLLM lacks (a Qwen2 with VITA-Audio-style multi-token-prediction
heads: model.trust_remote_code, model.extra_modules), and a text LM given a speech
vocabulary by `python -m wavalign.extend_vocab`, each through what a run does with a policy: the
DeepSpeed learner's mixed step on toy rows, its HF export served by vLLM with the learner's logprobs,
vLLM's samples from it trained on by the next step (the sampler's logprobs the learner's), a weight
sync after that step (vLLM follows the learner, <= 1e-3, and moved with it), and an
exact resume from a DeepSpeed checkpoint. One rollout worker serves each model in turn (its vLLM
in its own process: one import, one engine at a time), so the file costs seconds per family."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

from actors.rollout import RolloutWorker
from learner.advantages import group_advantages
from tests.integration.conftest import MISMATCH_FLOOR, on_this_node
from tests.integration.test_learner_worker import make_batch
from wavalign.model_files import load_tokenizer, load_tokenizer_and_layout, tokenizer_class_of
from wavalign.toy.families import FAMILIES, REMOTE_CODE_SETTINGS, save_family_model

MODELS = [*FAMILIES, "extended_llama"]


class ServingRollout(RolloutWorker):
    """A rollout worker that can be pointed at another model (tests only: a run's workers serve
    one policy for life)."""

    def serve(self, model_path: str, cfg) -> dict:
        from vllm.distributed import cleanup_dist_env_and_memory

        self.engine = None
        gc.collect()
        cleanup_dist_env_and_memory()  # the last engine's process group, before the next one's
        RolloutWorker.__init__(self, model_path, cfg)
        return self.ready()


@pytest.fixture(scope="module")
def serving(cfg, ray_cluster):
    run_cfg = cfg.model_copy(deep=True)
    # the engine in the worker's process (not a child): each model's engine starts in seconds
    run_cfg.rollout = run_cfg.rollout.model_copy(update={"reproducible": True})
    handles = {}
    try:
        yield run_cfg, handles
    finally:
        for handle in handles.values():
            ray_cluster.kill(handle)


def extended_llama(toy_assets, out):
    """The toy tokenizer's text part as a text LM (Llama), then the speech vocabulary appended."""
    from transformers import AutoTokenizer

    from wavalign.extend_vocab import extend_vocab
    from wavalign.toy.rows import toy_corpus
    from wavalign.toy.task import AUDIO_PLACEHOLDER, all_questions
    from wavalign.toy.tokenizer import IM_START, build_text_tokenizer

    toy = AutoTokenizer.from_pretrained(toy_assets.model_dir)
    text = build_text_tokenizer(
        toy_corpus(all_questions(9)), eos=toy.eos_token, pad=toy.pad_token, specials=[IM_START, AUDIO_PLACEHOLDER]
    )
    text.save_pretrained(out / "text_tokenizer")
    save_family_model("llama", out / "text_tokenizer", out / "text_lm")
    layout = extend_vocab(out / "text_lm", out / "model", speech_tokens=256, log=lambda line: None)
    assert layout == {"preset": "tiny"}
    return out / "model"


def remapped(batch, source, target):
    """The toy rows' token ids in another tokenizer that names the same tokens (by name)."""
    ids = {i: target.convert_tokens_to_ids(source.convert_ids_to_tokens(i)) for i in range(len(source))}
    assert None not in ids.values() and target.unk_token_id not in ids.values()
    fields = ("rollout_prompts", "rollout_responses", "sft_prompts", "sft_targets")
    return dataclasses.replace(batch, **{f: [[ids[i] for i in seq] for seq in getattr(batch, f)] for f in fields})


@pytest.mark.parametrize("family", MODELS)
def test_a_family_steps_exports_serves_syncs_and_resumes(family, serving, toy_assets, cfg, dist_port, tmp_path):
    import ray
    from transformers import AutoTokenizer

    from actors.learner import LearnerWorker
    from wavalign.storage import RunStore

    run_cfg, handles = serving
    run_cfg = run_cfg.model_copy(deep=True)  # the family's model.* settings (its own code, extra heads)
    run_cfg.model = run_cfg.model.model_copy(update=REMOTE_CODE_SETTINGS.get(family, {}))
    if family == "extended_llama":
        model = extended_llama(toy_assets, tmp_path)
    else:
        model = save_family_model(family, toy_assets.model_dir, tmp_path / family)
    tokenizer, layout = load_tokenizer_and_layout(model, run_cfg.model.layout, run_cfg.model.trust_remote_code)
    assert_loaded_alike(tokenizer, model, run_cfg.model.trust_remote_code)
    toy_tokenizer = AutoTokenizer.from_pretrained(toy_assets.model_dir)
    first, second = (remapped(make_batch(toy_assets, cfg, lam), toy_tokenizer, tokenizer) for lam in (0.5, 0.3))
    learner_cfg = run_cfg.model_copy(deep=True)
    learner_cfg.learner = learner_cfg.learner.model_copy(update={"warmup_steps": 0, "learning_rate": 1e-3})
    store = RunStore(str(tmp_path / "run"))

    # 1. A learner step (RL on text tokens + SFT), its export, and a checkpoint of it.
    learner = LearnerWorker(str(model), learner_cfg, master_port=dist_port)
    stats = learner.train_step(first)
    assert stats["loss"] == stats["loss"] and stats["sft_loss"] > 0, stats
    learner.save_hf(store, "export")
    if family in REMOTE_CODE_SETTINGS:
        assert_extra_heads_kept(learner, model, tmp_path / "run" / "export")
    learner.save_checkpoint(store, "checkpoint", "step1")

    # 2. vLLM serves the export with the learner's logprobs: its weight names map onto vLLM's model.
    export = str(tmp_path / "run" / "export")
    if "worker" in handles:
        ray.get(handles["worker"].serve.remote(export, run_cfg), timeout=300)
    else:  # the first model: the worker starts serving it
        handles["worker"] = ray.remote(num_cpus=0)(ServingRollout).options(**on_this_node()).remote(export, run_cfg)
        ray.get(handles["worker"].ready.remote(), timeout=300)
    worker = handles["worker"]
    prompt, answer = first.sft_prompts[0], first.sft_targets[0]

    def served():
        return ray.get(worker.continuation_logprobs.remote(prompt, answer), timeout=120)

    def gap(a, b):
        return max(abs(x - y) for x, y in zip(a, b))

    exported = served()
    assert gap(exported, learner.continuation_logprobs(prompt, answer)) <= 1e-3

    # 3. vLLM samples G responses from the export (a logprob and a modality code per token); the
    # next learner step trains on them (its RL rows) and finds the sampler's logprobs its own (the
    # mismatch is float noise); that step reaches vLLM through the weight sync (the learner's names,
    # streamed).
    G = run_cfg.rollout.group_size
    records = ray.get(worker.generate.remote([("family", prompt)], 1), timeout=120)
    assert len(records) == G and all(len(r.modality) == len(r.response_token_ids) for r in records)
    assert all(set(r.modality) <= {1, 2, 3} for r in records)
    second = dataclasses.replace(
        second,
        rollout_prompts=[prompt] * G,
        rollout_responses=[list(r.response_token_ids) for r in records],
        advantages=group_advantages(torch.arange(G, dtype=torch.float32).view(1, G)).flatten().tolist(),
        rollout_logprobs=[list(r.logprobs) for r in records],
    )
    stats = learner.train_step(second)
    assert stats["mismatch_kl"] <= MISMATCH_FLOOR["kl"], stats
    assert all(
        stats[f"mismatch_{kind}_max_abs"] <= MISMATCH_FLOOR["max_abs"]
        for kind in ("text", "speech")
        if stats[f"mismatch_{kind}_max_abs"] == stats[f"mismatch_{kind}_max_abs"]
    ), stats
    report = learner.send_weights(1, [("family-worker", worker)])
    assert not report.failed
    now = learner.continuation_logprobs(prompt, answer)
    assert gap(served(), now) <= 1e-3
    assert gap(exported, now) > 1e-2  # the step moved the policy, and vLLM with it
    learner.close_weight_sync()

    # 4. Exact resume: the learner back to the step-1 checkpoint (weights, optimizer, schedule) takes
    # the second step again, to the same weights bit for bit (a fresh engine's resume at every ZeRO
    # stage: test_deepspeed_engine.py).
    expected = {name: tensor.clone() for name, tensor in learner.full_weights()}
    learner.load_checkpoint(store, "checkpoint", "step1")
    assert any(not torch.equal(expected[name], tensor) for name, tensor in learner.full_weights())
    learner.train_step(second)
    assert all(torch.equal(expected[name], tensor) for name, tensor in learner.full_weights())


def assert_loaded_alike(auto, model, trust_remote_code: bool) -> None:
    """What a reward worker loads, given the class of the driver's tokenizer (AutoTokenizer's), is
    the driver's tokenizer: same class, vocabulary, settings and text for any ids. (The families'
    checkpoints name the toy tokenizer's class or none, under model types whose own class differs:
    AutoTokenizer's branches for both.)"""
    named = tokenizer_class_of(auto)
    assert named is not None  # (None would load through AutoTokenizer: this would compare it with itself)
    direct = load_tokenizer(model, trust_remote_code, named)
    assert type(direct) is type(auto) and direct.get_vocab() == auto.get_vocab()
    assert direct.init_kwargs == auto.init_kwargs and direct.chat_template == auto.chat_template
    ids = torch.randint(len(auto), (400,), generator=torch.Generator().manual_seed(0)).tolist()
    for skip in (True, False):
        assert direct.decode(ids, skip_special_tokens=skip) == auto.decode(ids, skip_special_tokens=skip)


def assert_extra_heads_kept(learner, model, export):
    """The heads vLLM lacks: frozen in the learner (the step moved the rest, not them), and in the
    export unchanged, with the code that builds them, loadable with trust_remote_code."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    initial = load_file(model / "model.safetensors")
    now = dict(learner.full_weights())
    heads = [name for name in initial if name.startswith("mtp_heads.")]
    assert heads and all(torch.equal(now[name], initial[name]) for name in heads)
    assert not torch.equal(now["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])
    assert {"configuration_mtp_qwen2.py", "modeling_mtp_qwen2.py"} <= {p.name for p in export.iterdir()}
    reloaded = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).state_dict()
    assert all(torch.equal(reloaded[name], initial[name]) for name in heads)
