"""Reward workers on the real stack: a local HF reward model; a pool of 2 RewardWorkers scoring a
batch with the toy reward and a judge (a real HTTP server on 127.0.0.1) concurrently."""

import math
import os
import signal
import time

import pytest

from rewards.types import ScoredResponse
from tests.integration.judge_server import JudgeServer
from wavalign.data import read_rows
from wavalign.messages import RewardRequest
from wavalign.model_files import load_tokenizer_and_layout, tokenizer_class_of


def test_local_hf_reward_model(tmp_path, toy_assets):
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForSequenceClassification

    config = AutoConfig.from_pretrained(toy_assets.model_dir)
    config.num_labels = 1
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(toy_assets.model_dir).save_pretrained(tmp_path)

    from rewards.reward_model import HFRewardModel

    rm = HFRewardModel(str(tmp_path), scale=(1.0, 5.0), batch_size=2)
    responses = [ScoredResponse("what is one plus one", t) for t in ("one plus one is two", "one plus one is five", "")]
    batched = rm(responses)
    # what the model says of each (question, transcript) pair on its own, computed here by hand
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = Qwen2ForSequenceClassification.from_pretrained(tmp_path).eval()
    by_hand = []
    for r in responses:
        ids = tokenizer(r.question, r.text or "[empty]", return_tensors="pt")
        with torch.no_grad():
            by_hand.append(1 + 4 / (1 + math.exp(-model(**ids).logits[0, 0].item())))  # the logit onto 1-5
    assert len(batched) == 3 and all(isinstance(x, float) for x in batched)
    assert batched == pytest.approx(by_hand, abs=1e-4)  # batching and padding change no score
    assert len(set(by_hand)) == 3  # the three answers are told apart


def test_reward_pool_of_two_scores_with_toy_reward_and_judge(toy_assets, cfg, ray_cluster):
    from actors.reward_pool import RewardPool

    server = JudgeServer()
    try:
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.reward = run_cfg.reward.model_validate(
            {
                **cfg.reward.model_dump(),
                "num_workers": 2,
                "functions": [{"name": "toy_answer", "weight": 0.5}, {"name": "judge", "weight": 0.5}],
                "judge": {**cfg.reward.judge.model_dump(), "url": server.url("ok"), "backoff_s": 0.01},
            }
        )
        tokenizer, _ = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
        assert tokenizer_class_of(tokenizer) is not None  # the workers load it by its class, as in a run
        rows = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows[:6]
        requests = [
            RewardRequest(r.row_id, 0, r.reference_token_ids, r.question_text, r.sft_target_text, {"answer": r.answer})
            for r in rows
        ]
        dispatched = []
        pool = RewardPool(
            run_cfg,
            str(toy_assets.model_dir),
            log=lambda line: None,
            on_dispatch=lambda m, i: dispatched.append(m.name),
            tokenizer_class=tokenizer_class_of(tokenizer),  # as the driver starts them (checked below: decoding)
        )
        try:
            results = pool.score(requests)
            counters = pool.counters()
            # A worker killed (kill -9) between batches: the counters go on with its last report
            # (the next batch starts its replacement: test_faults.py).
            victim = pool.members[0]
            os.kill(victim.pid, signal.SIGKILL)
            wait_dead(ray_cluster, victim.handle)
            assert pool.counters() == counters and victim not in pool.members and len(pool.members) == 1
        finally:
            pool.shutdown()
    finally:
        server.close()
    assert len(set(dispatched)) == 2  # both workers got a share
    assert [(x.prompt_id, x.sample_index) for x in results] == [(r.row_id, 0) for r in rows]
    for x in results:
        assert x.scores == {"toy_answer": 5.0, "judge": 4.0}  # references are right; the judge says 4
        assert x.total == pytest.approx(4.5)
    assert counters["judge/requests"] == 6 and "judge/failures" not in counters
    # The judge heard the reference's speech: a WAV for every request, and the text channel as transcript.
    first_batch = server.bodies[:6]
    audio_parts = [b["messages"][1]["content"][1] for b in first_batch]
    assert len(audio_parts) == 6 and all(p["type"] == "input_audio" for p in audio_parts)
    transcripts = {b["messages"][1]["content"][0]["text"].split("Transcript of answer:\n")[1] for b in first_batch}
    assert transcripts == {r.sft_target_text for r in rows}


def wait_dead(ray, handle, timeout: float = 60) -> None:
    """Until Ray reports the worker's death (a call on it fails), so the test does not race it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(handle.ready.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.2)
    raise TimeoutError("the killed worker still answers")


def test_unusable_scores_of_any_function_become_the_default_and_are_counted(toy_assets, cfg):
    from actors.reward import RewardWorker

    worker = RewardWorker(str(toy_assets.model_dir), cfg)  # the plain class: toy_answer alone, weight 1
    tokenizer, _ = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    rows = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows[:6]
    requests = [
        RewardRequest(r.row_id, 0, r.reference_token_ids, r.question_text, None, {"answer": r.answer}) for r in rows
    ]
    toy = worker.functions["toy_answer"]
    worker.functions["toy_answer"] = lambda responses: [float("nan"), float("inf"), 9.0, "4", True, *toy(responses)[5:]]
    results = worker.score(requests)
    assert [x.total for x in results] == [2.5] * 5 + [5.0]  # the default for each unusable one; the last is right
    assert worker.counters() == {"toy_answer/invalid_scores": 5}
    worker.functions["toy_answer"] = lambda responses: [3.0]
    with pytest.raises(ValueError, match="reward function 'toy_answer' returned 1 values for 6 responses"):
        worker.score(requests)


def test_a_decoder_that_fails_on_some_responses_costs_their_audio_not_the_run(toy_assets, cfg):
    from actors.reward import RewardWorker
    from rewards.speech import ToySpeechDecoder

    worker = RewardWorker(str(toy_assets.model_dir), cfg)
    tokenizer, layout = load_tokenizer_and_layout(toy_assets.model_dir, cfg.model.layout)
    rows = read_rows(toy_assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=128).rows[:4]
    requests = [
        RewardRequest(r.row_id, 0, r.reference_token_ids, r.question_text, None, {"answer": r.answer}) for r in rows
    ]

    class FailsOnTheSecond(ToySpeechDecoder):
        calls = 0

        def decode(self, codes):
            FailsOnTheSecond.calls += 1
            if FailsOnTheSecond.calls % 4 == 2:  # the second response of each pass
                raise RuntimeError("padding size should be less than the input dimension")
            return super().decode(codes)

    worker.decoder = FailsOnTheSecond()
    views = [worker.view(r) for r in requests]
    assert [v.speech_error for v in views] == [
        None,
        "RuntimeError: padding size should be less than the input dimension",
        None,
        None,
    ]
    assert views[1].audio is None and all(v.audio is not None for v in views[::2])
    assert (
        len(worker.score(requests)) == 4 and worker.counters()["speech_decoder/failures"] == 2
    )  # views above, then score

    class ReturnsText(ToySpeechDecoder):
        def decode(self, codes):
            return "not audio"

    worker.decoder = ReturnsText()  # a decoder that returns the wrong thing is a bug: one line, the run ends
    with pytest.raises(TypeError, match="reward.speech_decoder: decode\\(\\) returned str"):
        worker.view(requests[0])
