"""OpenAI-compatible judge client (the only file that speaks HTTP to a judge), method.md §4.

One chat-completions request per response: a system rubric, then the question and the transcript
of the answer (the text channel), plus the decoded speech as a base64 WAV `input_audio` part when
audio is present. The reply's first `<score>N</score>` is the reward.

Nothing a judge endpoint does can raise out of the client or hold it past its deadlines. Every
failure of an attempt (refused, reset or closed connections, a reply that is not HTTP or is cut
short, an HTTP error, a redirect, 429, a body that is not a chat completion, no score, a trickle or
a hang) is counted by kind and retried with exponential backoff (a `Retry-After` is honoured up to
max_backoff_s); after the last attempt, or when the request's budget is spent, the configured
default score (method: 2.5) is used and counted as a failure. Three wall-clock deadlines bound the
time: each attempt (timeout_s, however slowly the bytes come), each request with its retries
(request_timeout_s), and each call, all of its requests together (call_timeout_s, which the reward
worker sets inside reward.timeout_s). Redirects are never followed, so the API key goes only to the
configured URL; it is read from an environment variable and never logged or shown. Out-of-range
scores are clamped or replaced by the default, as configured; a non-finite one always by the
default. Requests run concurrently up to a bound. No proxy is used: the judge is reached directly.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from rewards.judge_reply import BadReply, reply_content, retry_after_seconds
from rewards.scores import BadScore, fit_to_scale, parse_score
from rewards.types import ScoredResponse
from rewards.wav import wav_base64
from wavalign.config import http_url_problem

MAX_REPLY_BYTES = 4 * 2**20  # a chat completion holding one score is a few KiB
CALL_GRACE_S = 1.0  # past the call deadline, how long a call waits for attempts being cut off

_REPLY_FORMAT = "Reply exactly as <justification>...</justification><score>N</score>, N from 1 to 5."
HOLISTIC_RUBRIC = (
    "You rate a voice assistant's spoken answer to a spoken question. Judge it as a listener would: is it "
    "correct, helpful and on topic, and is the speech clear and natural? 1 is useless, 5 is excellent. " + _REPLY_FORMAT
)
SEMANTIC_RUBRIC = (
    "You rate the content of a voice assistant's answer to a question: correctness, relevance and "
    "helpfulness only. Ignore how it sounds. 1 is wrong or off topic, 5 is fully correct and helpful. " + _REPLY_FORMAT
)
ACOUSTIC_RUBRIC = (
    "You rate how a voice assistant's answer sounds: clarity, fluency, pronunciation, emotion, pacing and "
    "listening comfort. Ignore whether the content is correct. 1 is unpleasant or unintelligible, 5 is natural "
    "and pleasant. " + _REPLY_FORMAT
)


@dataclass(frozen=True)
class JudgeSettings:
    url: str  # the full chat-completions URL, e.g. http://host:8000/v1/chat/completions
    model: str
    rubric: str = HOLISTIC_RUBRIC
    api_key_env: str = "WAVALIGN_REWARD_API_KEY"
    timeout_s: float = 60.0  # each attempt, wall clock
    request_timeout_s: float = 300.0  # each request, its retries and waits included
    call_timeout_s: float = 810.0  # each call: all of its requests (the reward worker: 0.9 x reward.timeout_s)
    max_attempts: int = 5
    backoff_s: float = 5.0  # wait before retry k: backoff_s * 2**(k-1), at most max_backoff_s
    max_backoff_s: float = 60.0
    max_concurrency: int = 8
    default_score: float = 2.5
    scale_min: float = 1.0
    scale_max: float = 5.0
    out_of_range: str = "default"  # "default" | "clamp"
    send_audio: bool = True
    wav_header_rate: int | None = None  # None = the audio's true rate (method §15 item 2)
    max_tokens: int = 512
    extra_body: dict | None = None  # merged into each request, e.g. vLLM's {"structured_outputs": {"regex": ...}}


class _Failed(Exception):
    """One failed attempt: the counter it goes to, and a wait the server asked for."""

    def __init__(self, kind: str, retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind, self.retry_after = kind, retry_after


class OpenAIJudge:
    """A reward function backed by an OpenAI-compatible chat-completions endpoint.

    `judge(responses) -> list[float]`; `judge.counters()` reports requests, attempts, retries,
    failures (default score used) and each kind of failed attempt: timeouts, connection_errors,
    protocol_errors (not HTTP, cut short), http_errors, redirects, rate_limited, bad_replies,
    deadline_exceeded (budget spent before the attempts), out_of_range, clamped, other_errors.

    Example (against a judge at 127.0.0.1:8000 that answers "<score>4</score>"):

        judge = OpenAIJudge(JudgeSettings(url="http://127.0.0.1:8000/v1/chat/completions", model="gpt-4o"))
        judge([ScoredResponse("what is one plus one", "one plus one is two")])   # -> [4.0]
    """

    def __init__(self, settings: JudgeSettings, name: str = "judge") -> None:
        if settings.out_of_range not in ("default", "clamp"):
            raise ValueError(f"out_of_range must be 'default' or 'clamp', got {settings.out_of_range!r}")
        if problem := http_url_problem(settings.url):
            raise ValueError(f"judge url: {problem}")
        self.settings, self.name, self._url = settings, name, urllib.parse.urlsplit(settings.url)
        self._key = os.environ.get(settings.api_key_env, "")
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIJudge(name={self.name!r}, url={self.settings.url!r}, model={self.settings.model!r})"

    def __call__(self, responses: Sequence[ScoredResponse]) -> list[float]:
        """Scores in order; every request is answered (a score or the default) by call_timeout_s."""
        if not responses:
            return []
        s = self.settings
        deadline = time.monotonic() + s.call_timeout_s
        self._count("requests", len(responses))
        pool = ThreadPoolExecutor(
            max_workers=min(s.max_concurrency, len(responses)), thread_name_prefix=f"judge-{self.name}"
        )
        futures = [pool.submit(self.score_one, r, deadline) for r in responses]
        done, _ = wait(futures, timeout=deadline - time.monotonic() + CALL_GRACE_S)
        # Requests not started by now are cancelled; one stuck where no socket deadline reaches
        # (a name lookup) is left to finish on its own.
        pool.shutdown(wait=False, cancel_futures=True)
        scores = []
        for future in futures:
            if future in done:
                scores.append(future.result())
            else:
                self._count("deadline_exceeded")
                self._count("failures")
                scores.append(s.default_score)
        return scores

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def score_one(self, response: ScoredResponse, call_deadline: float | None = None) -> float:
        """One response's score: attempts until one succeeds, the attempts or the budget run out."""
        s = self.settings
        now = time.monotonic()
        deadline = min(now + s.request_timeout_s, call_deadline if call_deadline is not None else math.inf)
        try:
            payload = json.dumps(self.payload(response)).encode()
            for attempt in range(1, s.max_attempts + 1):
                if time.monotonic() >= deadline:
                    self._count("deadline_exceeded")
                    break
                self._count("attempts")
                try:
                    return self._in_scale(self._attempt(payload, min(time.monotonic() + s.timeout_s, deadline)))
                except _Failed as failed:
                    self._count(failed.kind)
                    pause = min(s.backoff_s * 2 ** (attempt - 1), s.max_backoff_s)
                    if failed.retry_after is not None:
                        pause = min(max(pause, failed.retry_after), s.max_backoff_s)
                if attempt == s.max_attempts:
                    break
                if time.monotonic() + pause >= deadline:
                    self._count("deadline_exceeded")
                    break
                self._count("retries")
                time.sleep(pause)
        except Exception:  # a bug here must not take the reward worker down: default, counted
            self._count("other_errors")
        if call_deadline is None or time.monotonic() < call_deadline + CALL_GRACE_S:  # else the call counted it
            self._count("failures")
        return s.default_score

    def _in_scale(self, score: float) -> float:
        s = self.settings
        try:
            fitted = fit_to_scale(score, s.scale_min, s.scale_max, s.out_of_range)
        except BadScore:
            self._count("out_of_range")
            return s.default_score
        if fitted != score:
            self._count("clamped")
        return fitted

    def payload(self, response: ScoredResponse) -> dict:
        s = self.settings
        text = f"Question:\n{response.question}\n\nTranscript of answer:\n{response.text or '[empty]'}"
        content: str | list[dict] = text
        if s.send_audio and response.audio is not None:
            audio = {"data": wav_base64(response.audio, s.wav_header_rate), "format": "wav"}
            content = [{"type": "text", "text": text}, {"type": "input_audio", "input_audio": audio}]
        return {
            "model": s.model,
            "messages": [{"role": "system", "content": s.rubric}, {"role": "user", "content": content}],
            "max_tokens": s.max_tokens,
            **(s.extra_body or {}),
        }

    def _attempt(self, payload: bytes, deadline: float) -> float:
        """The score of one POST, or _Failed naming what went wrong."""
        status, headers, body = self._exchange(payload, deadline)
        if status == 200:
            try:
                return parse_score(reply_content(body))
            except (BadReply, BadScore):
                raise _Failed("bad_replies") from None
        wait_s = retry_after_seconds(headers.get("Retry-After"), time.time())
        if 300 <= status < 400:
            raise _Failed("redirects")  # not followed: the key stays with the configured URL
        raise _Failed("rate_limited" if status == 429 else "http_errors", wait_s)

    def _exchange(self, payload: bytes, deadline: float) -> tuple[int, http.client.HTTPMessage, bytes]:
        """POST and read the whole reply by `deadline` (wall clock): a watchdog shuts the socket
        down when it passes, which ends any read however slowly the bytes come."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed("timeouts")
        url = self._url
        if url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                url.hostname, url.port, timeout=remaining, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=remaining)
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(remaining, cut_off)
        watchdog.daemon = True
        watchdog.start()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            conn.request("POST", url.path + (f"?{url.query}" if url.query else ""), body=payload, headers=headers)
            reply = conn.getresponse()
            body = reply.read(MAX_REPLY_BYTES + 1)
            if expired.is_set():  # a body read to the cut-off looks complete when its length is not stated
                raise _Failed("timeouts")
            if len(body) > MAX_REPLY_BYTES:
                raise _Failed("bad_replies")
            if reply.length:  # bytes the Content-Length promised that never came
                raise _Failed("protocol_errors")
            return reply.status, reply.headers, body
        except _Failed:
            raise
        except Exception as err:
            raise _Failed("timeouts" if expired.is_set() else _failure_kind(err)) from None
        finally:
            watchdog.cancel()
            conn.close()


class TwoJudges:
    """The method's two-judge option: r = 0.7 x semantic + 0.3 x acoustic (stays on the 1-5 scale)."""

    def __init__(self, semantic: OpenAIJudge, acoustic: OpenAIJudge, weights: tuple[float, float] = (0.7, 0.3)) -> None:
        self.semantic, self.acoustic, self.weights = semantic, acoustic, weights

    def __call__(self, responses: Sequence[ScoredResponse]) -> list[float]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            semantic, acoustic = pool.map(lambda judge: judge(responses), (self.semantic, self.acoustic))
        w_sem, w_ac = self.weights
        return [w_sem * s + w_ac * a for s, a in zip(semantic, acoustic)]

    def counters(self) -> dict[str, int]:
        merged: Counter[str] = Counter()
        for prefix, judge in (("semantic", self.semantic), ("acoustic", self.acoustic)):
            merged.update({f"{prefix}_{k}": v for k, v in judge.counters().items()})
        return dict(merged)


def _failure_kind(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timeouts"
    if isinstance(err, ConnectionError):  # refused, reset, closed before a reply (RemoteDisconnected)
        return "connection_errors"
    if isinstance(err, http.client.HTTPException):  # not HTTP, a body cut short, oversized headers
        return "protocol_errors"
    if isinstance(err, OSError):  # unreachable, name lookup, TLS
        return "connection_errors"
    return "other_errors"
