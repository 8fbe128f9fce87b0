"""Reading what a judge endpoint sent back: the chat-completions body and a `Retry-After` header.
Every way a body can be wrong is one BadReply that says what was wrong. Pure module: standard
library only.
"""

from __future__ import annotations

import email.utils
import json
import math


class BadReply(ValueError):
    """The body is not a chat completion with a text message; the message says why."""


def reply_content(body: bytes) -> str:
    """The first choice's message content of a chat-completions body.

    >>> reply_content(b'{"choices": [{"message": {"role": "assistant", "content": "<score>4</score>"}}]}')
    '<score>4</score>'
    """
    try:
        reply = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadReply(f"body is not UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise BadReply(f"body is not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(reply, dict):
        raise BadReply(f"body is a JSON {type(reply).__name__}, not an object")
    choices = reply.get("choices")
    if not isinstance(choices, list):
        raise BadReply(f"'choices' is {_kind(choices)}, not a list")
    if not choices:
        raise BadReply("'choices' is empty")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise BadReply(f"'choices[0].message' is {_kind(message)}, not an object")
    content = message.get("content")
    if content is None:  # a refusal or a tool call: no text to read a score from
        return ""
    if not isinstance(content, str):
        raise BadReply(f"'choices[0].message.content' is {_kind(content)}, not text")
    return content


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date; `now` is
    time.time()), or None when absent or unreadable.

    >>> retry_after_seconds("3", 0.0)
    3.0
    >>> retry_after_seconds("Thu, 01 Jan 1970 00:00:10 GMT", 4.0)
    6.0
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _kind(value: object) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"
