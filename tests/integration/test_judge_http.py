"""The judge client against real HTTP servers on 127.0.0.1: right answers, slow answers, and every
way a judge endpoint fails (transport, statuses, reply shapes, scores, hangs and trickles). Each
failure is retried, then scored the default and counted by kind, within its deadline."""

import base64
import io
import time
import wave

import pytest

from rewards.judge import JudgeSettings, OpenAIJudge, TwoJudges
from rewards.speech import ToySpeechDecoder
from rewards.types import ScoredResponse
from tests.integration.judge_server import REPLIES, JudgeServer


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


# Every failure mode: (URL mode, the counter its attempts go to). Two attempts each, 0.5 s per
# attempt, 2 s per request: each request must end with the default by its deadline.
FAILURES = [
    ("reset", "connection_errors"),
    ("close", "connection_errors"),
    ("nothttp", "protocol_errors"),
    ("truncated", "protocol_errors"),
    ("huge_headers", "protocol_errors"),
    ("hang", "timeouts"),
    ("trickle", "timeouts"),
    ("trickle_headers", "timeouts"),
    ("fail", "http_errors"),
    ("redirect", "redirects"),
    *[(mode, "bad_replies") for mode in REPLIES if mode not in ("high", "infinite")],
    ("high", "out_of_range"),
    ("infinite", "out_of_range"),
]
DEADLINES = dict(timeout_s=0.5, request_timeout_s=2.0, max_attempts=2, backoff_s=0.01)


@pytest.mark.parametrize("mode,kind", FAILURES, ids=[mode for mode, _ in FAILURES])
def test_every_failure_is_retried_then_default_counted_and_within_its_deadline(mode, kind, monkeypatch):
    monkeypatch.setenv("WAVALIGN_REWARD_API_KEY", "sk-secret-key")
    elsewhere = JudgeServer()
    server = JudgeServer(trickle_seconds=0.2, redirect_to=elsewhere.url("ok"))
    try:
        j = judge(server, mode, out_of_range="clamp" if mode == "infinite" else "default", **DEADLINES)
        started = time.monotonic()
        assert j(RESPONSES[:1]) == [2.5]
        took = time.monotonic() - started
    finally:
        server.close()
        elsewhere.close()
    counts = j.counters()
    attempts = 1 if kind == "out_of_range" else 2  # an answer with an off-scale score is final: not a failure
    assert counts["requests"] == 1 and counts["attempts"] == attempts and counts.get("failures", 0) == attempts - 1, (
        counts
    )
    assert counts[kind] == attempts and sum(v for k, v in counts.items() if k in KINDS) == attempts, counts
    assert took < DEADLINES["request_timeout_s"] + 0.5, f"{mode}: {took:.2f} s"
    assert not elsewhere.hits  # redirects are not followed: the key never leaves the configured URL


KINDS = {
    "connection_errors",
    "protocol_errors",
    "timeouts",
    "http_errors",
    "redirects",
    "bad_replies",
    "out_of_range",
    "rate_limited",
    "deadline_exceeded",
    "other_errors",
}


@pytest.mark.parametrize(
    "mode,kind", [("ratelimit", "rate_limited"), ("ratelimit_date", "rate_limited"), ("unavailable", "http_errors")]
)
def test_retry_after_is_honoured_up_to_the_cap(mode, kind):
    asked = 2 if mode == "ratelimit_date" else 1  # an HTTP date has whole seconds: asks for 1 to 2 s
    server = JudgeServer(flaky_failures=1, retry_after=asked)
    try:
        patient = judge(server, mode, backoff_s=0.01, max_backoff_s=10)
        started = time.monotonic()
        assert patient(RESPONSES[:1]) == [3.0]
        waited = time.monotonic() - started
        server.hits.clear()  # the first request is refused again
        capped = judge(server, mode, backoff_s=0.01, max_backoff_s=0.2)
        started = time.monotonic()
        assert capped(RESPONSES[:1]) == [3.0]
        capped_wait = time.monotonic() - started
    finally:
        server.close()
    assert waited >= 1.0 and capped_wait < 0.9  # the server's wait (not backoff_s 0.01), but at most 0.2 s
    assert patient.counters()[kind] == 1 and capped.counters()[kind] == 1


def test_a_hanging_judge_spends_the_request_budget_not_every_attempt(server):
    j = judge(server, "hang", timeout_s=0.5, request_timeout_s=1.2, max_attempts=5)
    started = time.monotonic()
    assert j(RESPONSES[:1]) == [2.5]
    assert time.monotonic() - started < 1.2 + 0.5
    counts = j.counters()
    assert counts["timeouts"] == 3 and counts["deadline_exceeded"] == 1 and counts["failures"] == 1, counts


def test_a_call_ends_by_its_deadline_whatever_the_judge_does(server):
    j = judge(server, "hang", timeout_s=30, request_timeout_s=30, call_timeout_s=1.0, max_concurrency=2)
    started = time.monotonic()
    assert j([RESPONSES[0]] * 8) == [2.5] * 8  # 8 requests, 2 at a time, each would hang 30 s
    assert time.monotonic() - started < 1.0 + 1.5
    counts = j.counters()
    assert counts["requests"] == 8 and counts["failures"] == 8, counts


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
    j = OpenAIJudge(
        JudgeSettings(
            url="http://127.0.0.1:9/v1/chat/completions", model="m", timeout_s=0.5, max_attempts=2, backoff_s=0.01
        )
    )
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
