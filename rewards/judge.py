"""OpenAI-compatible judge client (the only file that speaks HTTP to a judge), method.md §4.

One chat-completions request per response: a system rubric, then the question and the transcript
of the answer (the text channel), plus the decoded speech as a base64 WAV `input_audio` part when
audio is present. The reply's first `<score>N</score>` is the reward. Failures (HTTP errors,
timeouts, unreadable replies) are retried with exponential backoff; after the last attempt the
configured default score (method: 2.5) is used and counted as a failure. Out-of-range scores are
clamped or replaced by the default, as configured, and counted. Requests run concurrently up to a
bound. The API key is read from an environment variable and never logged or shown.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rewards.scores import BadScore, fit_to_scale, parse_score
from rewards.types import ScoredResponse
from rewards.wav import wav_base64

_REPLY_FORMAT = "Reply exactly as <justification>...</justification><score>N</score>, N from 1 to 5."
HOLISTIC_RUBRIC = (
    "You rate a voice assistant's spoken answer to a spoken question. Judge it as a listener would: is it "
    "correct, helpful and on topic, and is the speech clear and natural? 1 is useless, 5 is excellent. "
    + _REPLY_FORMAT
)
SEMANTIC_RUBRIC = (
    "You rate the content of a voice assistant's answer to a question: correctness, relevance and "
    "helpfulness only. Ignore how it sounds. 1 is wrong or off topic, 5 is fully correct and helpful. "
    + _REPLY_FORMAT
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
    timeout_s: float = 60.0
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


class OpenAIJudge:
    """A reward function backed by an OpenAI-compatible chat-completions endpoint.

    `judge(responses) -> list[float]`; `judge.counters()` reports requests, attempts, retries,
    failures (default score used), timeouts, HTTP errors, unreadable replies and out-of-range scores.

    Example (against a judge at 127.0.0.1:8000 that answers "<score>4</score>"):

        judge = OpenAIJudge(JudgeSettings(url="http://127.0.0.1:8000/v1/chat/completions", model="gpt-4o"))
        judge([ScoredResponse("what is one plus one", "one plus one is two")])   # -> [4.0]
    """

    def __init__(self, settings: JudgeSettings, name: str = "judge") -> None:
        if settings.out_of_range not in ("default", "clamp"):
            raise ValueError(f"out_of_range must be 'default' or 'clamp', got {settings.out_of_range!r}")
        self.settings, self.name = settings, name
        self._key = os.environ.get(settings.api_key_env, "")
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIJudge(name={self.name!r}, url={self.settings.url!r}, model={self.settings.model!r})"

    def __call__(self, responses: Sequence[ScoredResponse]) -> list[float]:
        if not responses:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.max_concurrency, len(responses))) as pool:
            return list(pool.map(self.score_one, responses))

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def score_one(self, response: ScoredResponse) -> float:
        s = self.settings
        self._count("requests")
        payload = self.payload(response)
        for attempt in range(1, s.max_attempts + 1):
            self._count("attempts")
            try:
                score = parse_score(self._post(payload))
            except (TimeoutError, urllib.error.URLError, urllib.error.HTTPError, BadScore, ValueError, KeyError) as err:
                self._count(_failure_kind(err))
                if attempt < s.max_attempts:
                    self._count("retries")
                    time.sleep(min(s.backoff_s * 2 ** (attempt - 1), s.max_backoff_s))
                continue
            return self._in_scale(score)
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

    def _post(self, payload: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.settings.url, data=json.dumps(payload).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as reply:
            body = json.loads(reply.read().decode("utf-8"))
        return body["choices"][0]["message"]["content"] or ""


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
    if isinstance(err, urllib.error.HTTPError):
        return "http_errors"
    if isinstance(err, TimeoutError) or (isinstance(err, urllib.error.URLError) and isinstance(err.reason, TimeoutError)):
        return "timeouts"
    if isinstance(err, urllib.error.URLError):
        return "connection_errors"
    return "bad_replies"
