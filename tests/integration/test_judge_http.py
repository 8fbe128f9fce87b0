"""The judge client against real HTTP servers on 127.0.0.1: right answers, slow answers, 500s,
garbage, out-of-range scores; retries, timeouts, defaults and counters."""

import base64
import io
import wave

import pytest

from rewards.judge import JudgeSettings, OpenAIJudge, TwoJudges
from rewards.speech import ToySpeechDecoder
from rewards.types import ScoredResponse
from tests.integration.judge_server import JudgeServer


@pytest.fixture
def server():
    s = JudgeServer(slow_seconds=2.0, flaky_failures=2)
    yield s
    s.close()


def judge(server, mode, **overrides):
    settings = dict(url=server.url(mode), model="judge-model", timeout_s=1.0, max_attempts=3, backoff_s=0.01)
    return OpenAIJudge(JudgeSettings(**{**settings, **overrides}))


RESPONSES = [ScoredResponse("what is one plus one", "one plus one is two"), ScoredResponse("what is two minus one", "")]


def test_right_answers_and_protocol(server, monkeypatch):
    monkeypatch.setenv("WAVALIGN_REWARD_API_KEY", "sk-secret-key")
    j = judge(server, "ok")
    assert j(RESPONSES) == [4.0, 4.0]
    assert j.counters() == {"requests": 2, "attempts": 2}
    body = server.bodies[0]
    assert body["model"] == "judge-model" and body["messages"][0]["role"] == "system"
    user = [b["messages"][1]["content"] for b in server.bodies]
    assert "Question:\nwhat is one plus one\n\nTranscript of answer:\none plus one is two" in user
    assert any(u.endswith("Transcript of answer:\n[empty]") for u in user)
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-key"
    assert "sk-secret-key" not in repr(j)


def test_audio_goes_as_base64_wav_at_its_true_rate(server):
    audio = ToySpeechDecoder().decode([3, 4, 5])
    judge(server, "ok")([ScoredResponse("q", "a", audio=audio)])
    text, part = server.bodies[0]["messages"][1]["content"]
    assert text["type"] == "text" and part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(part["input_audio"]["data"]))) as wav:
        assert wav.getframerate() == 22050 and wav.getnframes() == len(audio.samples) and wav.getsampwidth() == 2
    judge(server, "ok", wav_header_rate=24000)([ScoredResponse("q", "a", audio=audio)])  # bug-compatible header
    part = server.bodies[1]["messages"][1]["content"][1]
    with wave.open(io.BytesIO(base64.b64decode(part["input_audio"]["data"]))) as wav:
        assert wav.getframerate() == 24000


def test_500s_are_retried_then_default_and_counted(server):
    j = judge(server, "fail", default_score=2.5)
    assert j(RESPONSES[:1]) == [2.5]
    assert server.hits["fail"] == 3
    assert j.counters() == {"requests": 1, "attempts": 3, "http_errors": 3, "retries": 2, "failures": 1}


def test_flaky_server_recovers_within_the_attempts(server):
    j = judge(server, "flaky")
    assert j(RESPONSES[:1]) == [3.0]
    assert j.counters()["http_errors"] == 2 and "failures" not in j.counters()


def test_slow_answers_time_out_then_default(server):
    j = judge(server, "slow", timeout_s=0.3, max_attempts=2)
    assert j(RESPONSES[:1]) == [2.5]  # two 0.3 s timeouts, not two 2 s answers
    assert j.counters()["timeouts"] == 2 and j.counters()["failures"] == 1 and server.hits["slow"] == 2
    assert judge(server, "slow", timeout_s=5.0)(RESPONSES[:1]) == [4.0]  # patient enough: the score


@pytest.mark.parametrize("mode", ["garbage", "notjson"])
def test_unreadable_replies_default_and_count(server, mode):
    j = judge(server, mode)
    assert j(RESPONSES[:1]) == [2.5]
    assert j.counters()["bad_replies"] == 3 and j.counters()["failures"] == 1


def test_out_of_range_default_or_clamp(server):
    default = judge(server, "high", out_of_range="default")
    assert default(RESPONSES[:1]) == [2.5] and default.counters()["out_of_range"] == 1
    clamp = judge(server, "high", out_of_range="clamp")
    assert clamp(RESPONSES[:1]) == [5.0] and clamp.counters()["clamped"] == 1


def test_unreachable_server_defaults(server):
    j = OpenAIJudge(JudgeSettings(url="http://127.0.0.1:9/v1/chat/completions", model="m", timeout_s=0.5, max_attempts=2, backoff_s=0.01))
    assert j(RESPONSES[:1]) == [2.5] and j.counters()["connection_errors"] == 2


def test_requests_run_concurrently_up_to_the_bound(server):
    j = judge(server, "slow", timeout_s=10.0, max_concurrency=4)
    server.slow_seconds = 1.0  # each answer held long enough for the client's 4 to overlap
    assert j([RESPONSES[0]] * 8) == [4.0] * 8
    assert server.max_in_flight == 4 and server.hits["slow"] == 8  # 8 requests, at most (and at once) 4


def test_two_judges_weight_semantic_and_acoustic(server):
    both = TwoJudges(judge(server, "ok"), judge(server, "flaky"))
    assert both(RESPONSES[:1]) == [pytest.approx(0.7 * 4 + 0.3 * 3)]
    assert both.counters()["acoustic_http_errors"] == 2
